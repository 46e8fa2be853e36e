"""Stage 2, the alpha: colour difference against the (local) screen, its black / white points, despeckle."""

from __future__ import annotations

import numpy as np
import torch

from ..common.keycolour import key_difference


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


def key_points(noise: torch.Tensor, black: float, white: float, noise_black: float, noise_white: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """noise: [B] canvas noise -> (black, white) [B,1,1,1]: the user's points widened by the noise (noise and spill
    come together), black in [0, 0.2], white in [0.6, 1] and at least black + 0.05."""
    lo = (black + noise_black * noise).clamp(0, 0.2)[:, None, None, None]
    hi = (white - noise_white * noise).clamp(0.6, 1.0)[:, None, None, None]
    return lo, torch.maximum(hi, lo + 0.05)


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
