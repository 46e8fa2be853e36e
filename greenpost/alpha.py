"""Alpha from colour difference against a (local) key colour, edge-preserving refinement, despeckle."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .keycolour import key_difference
from .screen import local_colour


def difference_ratio(image: torch.Tensor, screen: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """image, screen: [B,3,H,W] (screen may be [B,3,1,1]) in [0,1], high: [B,3] bool -> r: [B,1,H,W].

    ``r = d(I) / d(K)``: 1 on the screen, about 0 (or below) on a non-key-coloured foreground.
    """
    d_i = key_difference(image, high)
    d_k = key_difference(screen, high).clamp_min(0.05)
    return d_i / d_k


def ratio_to_alpha(r: torch.Tensor, black: float, white: float | torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """r: [B,1,H,W] -> alpha [B,1,H,W] in [0,1]: ``clamp((1 - r - black) / (white - black)) ** gamma``.

    ``black``: the linear key (1 - r) below which a pixel is pure canvas (noise floor); ``white``: above which it
    is opaque (tolerates spill and a faintly key-tinted foreground). ``white`` may be a per-pixel map.
    """
    a = ((1.0 - r - black) / (white - black)).clamp(0, 1)
    if gamma != 1.0:
        a = a.pow(gamma)
    return a


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """mask: [B,1,H,W] in [0,1] -> [B,1,H,W]: grey erosion (min over a (2r+1) square)."""
    if radius <= 0:
        return mask
    return -F.max_pool2d(-mask, 2 * radius + 1, stride=1, padding=radius)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """mask: [B,1,H,W] in [0,1] -> [B,1,H,W]: grey dilation (max over a (2r+1) square)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def estimate_screen(image: torch.Tensor, key: torch.Tensor, high: torch.Tensor, cells: int = 64,
                    margin: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B,3,H,W], key [B,3] -> (screen [B,3,H,W] local clean plate, confident-canvas map [B,1,H,W]).

    Confident canvas: pixels whose colour difference is at least 0.7 of the key's and whose colour is near the
    key, eroded by ``margin`` px; their colour is averaged per cell and interpolated under the subject.
    """
    k = key[:, :, None, None]
    r = difference_ratio(image, k, high)
    near = (image - k).abs().amax(dim=1, keepdim=True) < 0.3
    conf = ((r > 0.7) & (r < 1.6) & near).to(image.dtype)
    conf = erode(conf, margin)
    has = conf.flatten(1).mean(dim=1) > 0.01
    screen = local_colour(image, conf, cells=cells)
    # Images with almost no visible canvas: keep the global key colour.
    screen = torch.where(has[:, None, None, None], screen, k.expand_as(screen))
    return screen, conf


def guided_refine(image: torch.Tensor, alpha: torch.Tensor, radius: int, eps: float, band: torch.Tensor | None = None,
                  subsample: int = 1) -> torch.Tensor:
    """image [B,3,H,W] guide, alpha [B,1,H,W] -> alpha refined by a guided filter (kornia), optionally only in band.

    Edge-preserving: alpha follows the image's own edges (full-resolution luma), which recovers detail the
    colour difference loses to chroma subsampling and noise.
    """
    from kornia.filters import guided_blur

    k = 2 * radius + 1
    out = guided_blur(image, alpha, k, eps, border_type="replicate", subsample=subsample).clamp(0, 1)
    if band is not None:
        out = torch.where(band > 0, out, alpha)
    return out


def despeckle(alpha: torch.Tensor, min_area: int) -> torch.Tensor:
    """alpha [B,1,H,W] in [0,1] -> same: removes faint islands smaller than min_area px and fills small holes.

    Islands: 8-connected components of ``alpha > 0.05`` with fewer than ``min_area`` pixels whose peak alpha is
    below 0.5 (noise specks on the canvas; real but faint hair tips are larger or stronger). Holes: components of
    ``alpha < 0.95`` smaller than ``min_area`` and entirely surrounded by opaque pixels are set opaque.
    """
    import cv2

    if min_area <= 0:
        return alpha
    out = alpha.detach().float().cpu().numpy().copy()
    for i in range(out.shape[0]):
        a = out[i, 0]
        fg = (a > 0.05).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        if n > 1:
            small = np.where(stats[1:, cv2.CC_STAT_AREA] < min_area)[0] + 1
            if small.size:
                peak = np.zeros(n, np.float32)
                np.maximum.at(peak, lab.ravel(), a.ravel())
                kill = np.zeros(n, bool)
                kill[small] = peak[small] < 0.5
                a[kill[lab]] = 0.0
        holes = (a < 0.95).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
        if n > 1:
            h, w = a.shape
            x, y, bw, bh = (stats[:, j] for j in range(4))
            inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
            fill = (stats[:, cv2.CC_STAT_AREA] < min_area) & inner
            fill[0] = False
            # the holes component set includes the canvas itself, which touches the border or is large
            a[fill[lab]] = 1.0
        out[i, 0] = a
    return torch.from_numpy(out).to(device=alpha.device, dtype=alpha.dtype)
