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
    return -dilate(-mask, radius)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """mask: [B,1,H,W] in [0,1] -> [B,1,H,W]: grey dilation (max over a (2r+1) square)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    if mask.device.type == "cpu" and mask.dtype == torch.float32:
        import cv2  # much faster than a stride-1 max-pool on CPU; same result (replicated border)

        kernel = np.ones((k, k), np.uint8)
        arr = mask.detach().contiguous().numpy()
        out = np.empty_like(arr)
        for i in range(arr.shape[0]):
            out[i, 0] = cv2.dilate(arr[i, 0], kernel, borderType=cv2.BORDER_REPLICATE)
        return torch.from_numpy(out)
    out = F.max_pool2d(mask, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(out, (k, 1), stride=1, padding=(radius, 0))


def estimate_screen(image: torch.Tensor, key: torch.Tensor, high: torch.Tensor, cells: int = 64,
                    margin: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B,3,H,W], key [B,3] -> (screen [B,3,H,W] local clean plate, confident-canvas map [B,1,H,W]).

    Two passes: pixels whose colour difference is at least 0.7 of the key's and whose colour is near the key give
    a rough plate; then only pixels within the canvas noise of that plate (eroded by ``margin`` px) are averaged
    per cell and interpolated under the subject (push-pull), so semi-transparent edges do not leak into it.
    """
    k = key[:, :, None, None]
    r = difference_ratio(image, k, high)
    near = (image - k).abs().amax(dim=1, keepdim=True) < 0.3
    conf = erode(((r > 0.7) & (r < 1.6) & near).to(image.dtype), margin)
    has = conf.flatten(1).mean(dim=1) > 0.01
    rough = local_colour(image, conf, cells=cells)
    r2 = difference_ratio(image, rough, high)
    # robust spread of r on the rough canvas: median absolute deviation from 1 (edges do not inflate it)
    spread = []
    for i in range(r2.shape[0]):
        v = (r2[i] - 1).abs()[conf[i] > 0]
        v = v[:: max(1, v.numel() // 50_000)]
        spread.append(v.median() if v.numel() else r2.new_zeros(()))
    tol = (1.4826 * 4.0 * torch.stack(spread)).clamp(0.03, 0.3)[:, None, None, None]
    conf = erode((((r2 - 1).abs() < tol) & (conf > 0)).to(image.dtype), margin)
    screen = local_colour(image, conf, cells=cells)
    # Images with almost no visible canvas: keep the global key colour.
    screen = torch.where(has[:, None, None, None], screen, k.expand_as(screen))
    return screen, conf


def dilate_coarse(mask: torch.Tensor, radius: int, factor: int = 4) -> torch.Tensor:
    """mask: [B,1,H,W] in [0,1] -> [B,1,H,W] in {0,1}: dilation by about ``radius`` px computed on a ``factor``-times
    coarser grid (cheap for large radii; the reach is rounded up to whole cells)."""
    if radius <= 0:
        return (mask > 0).to(mask.dtype)
    h, w = mask.shape[-2:]
    small = F.max_pool2d(mask, factor, ceil_mode=True)
    cells = -(-radius // factor)
    small = dilate(small, cells)
    return F.interpolate(small, scale_factor=factor, mode="nearest")[..., :h, :w]


def guided_refine(image: torch.Tensor, alpha: torch.Tensor, radius: int, eps: float, band: torch.Tensor | None = None,
                  subsample: int = 1, guide: str = "luma") -> torch.Tensor:
    """image [B,3,H,W] guide, alpha [B,1,H,W] -> alpha refined by a guided filter (kornia), optionally only in band.

    Edge-preserving: alpha follows the image's own edges (full-resolution luma), which recovers detail the
    colour difference loses to chroma subsampling and noise.
    """
    from kornia.filters import guided_blur

    k = 2 * radius + 1
    if image.shape[1] == 3 and guide == "luma":
        w = image.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        image = (image * w).sum(dim=1, keepdim=True)
    out = guided_blur(image, alpha, k, eps, border_type="replicate", subsample=subsample).clamp(0, 1)
    if band is not None:
        out = torch.where(band > 0, out, alpha)
    return out


def despeckle(alpha: torch.Tensor, min_area: int, hole_area: int = 0) -> torch.Tensor:
    """alpha [B,1,H,W] in [0,1] -> same: removes faint islands smaller than min_area px and fills small holes.

    Islands: 8-connected components of ``alpha > 0.05`` with fewer than ``min_area`` pixels whose peak alpha is
    below 0.5 (noise specks on the canvas; real but faint hair tips are larger or stronger). Holes: components of
    ``alpha < 0.5`` smaller than ``hole_area`` (default 0: off; fine nets and hair have many such gaps) that do not touch the image border are set opaque (key-coloured specks
    inside the subject); semi-transparent areas above 0.5 are never touched.
    """
    import cv2

    if min_area <= 0 and hole_area <= 0:
        return alpha
    out = alpha.detach().float().cpu().numpy().copy()
    for i in range(out.shape[0]):
        a = out[i, 0]
        fg = (a > 0.05).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8) if min_area > 0 else (0, 0, 0, 0)
        if n > 1:
            small = stats[:, cv2.CC_STAT_AREA] < min_area
            small[0] = False
            if small.any():
                ids = np.flatnonzero(small)
                if len(ids) <= 256:  # few specks: check each one's peak in its own bounding box
                    kill = np.zeros(n, bool)
                    for j in ids:
                        x, y, bw, bh = stats[j, :4]
                        sub = lab[y : y + bh, x : x + bw] == j
                        kill[j] = a[y : y + bh, x : x + bw][sub].max() < 0.5
                else:
                    strong = np.zeros(n, bool)
                    strong[lab[a >= 0.5]] = True
                    kill = small & ~strong
                ids = np.flatnonzero(kill)
                if len(ids) <= 256:
                    for j in ids:
                        x, y, bw, bh = stats[j, :4]
                        sub = a[y : y + bh, x : x + bw]
                        sub[lab[y : y + bh, x : x + bw] == j] = 0.0
                else:
                    a[kill[lab]] = 0.0
        holes = (a < 0.5).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4) if hole_area > 0 else (0, 0, 0, 0)
        if n > 1:
            h, w = a.shape
            x, y, bw, bh = (stats[:, j] for j in range(4))
            inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
            fill = (stats[:, cv2.CC_STAT_AREA] < hole_area) & inner
            fill[0] = False
            # the holes component set includes the canvas itself, which touches the border or is large
            a[fill[lab]] = 1.0
        out[i, 0] = a
    return torch.from_numpy(out).to(device=alpha.device, dtype=alpha.dtype)
