"""High-quality mode: closed-form matting (Levin et al., via pymatting) only in the uncertain band."""

from __future__ import annotations

import numpy as np
import torch

from .alpha import dilate


def band_matting(image: torch.Tensor, alpha: torch.Tensor, band_radius: int = 2, lo: float = 0.02, hi: float = 0.98,
                 blend: float = 0.5, max_unknown: float = 0.6) -> torch.Tensor:
    """image [B,3,H,W] in [0,1], alpha [B,1,H,W] (1 = opaque) -> alpha [B,1,H,W] re-solved in the transition band.

    The keyer's confident pixels (alpha <= lo or >= hi, outside a ``band_radius`` dilation of the transition)
    are the trimap's known regions; closed-form matting solves the rest on the image's bounding box of the band
    and the result is blended (``blend``) with the keyer's alpha there. Images whose band covers more than
    ``max_unknown`` of the frame keep the keyer's alpha (closed-form matting needs known pixels nearby).
    """
    from pymatting import estimate_alpha_cf

    trans = ((alpha > lo) & (alpha < hi)).float()
    band = dilate(trans, band_radius) > 0
    out = alpha.clone()
    for i in range(alpha.shape[0]):
        m = band[i, 0]
        if not bool(m.any()) or float(m.float().mean()) > max_unknown:
            continue
        ys, xs = torch.nonzero(m, as_tuple=True)
        pad = 4 * band_radius + 4
        y0, y1 = max(0, int(ys.min()) - pad), min(m.shape[0], int(ys.max()) + pad + 1)
        x0, x1 = max(0, int(xs.min()) - pad), min(m.shape[1], int(xs.max()) + pad + 1)
        a = alpha[i, 0, y0:y1, x0:x1].detach().double().cpu().numpy()
        unknown = m[y0:y1, x0:x1].cpu().numpy()
        trimap = np.where(a >= 0.5, 1.0, 0.0)
        trimap[unknown] = 0.5
        if not ((trimap == 1).any() and (trimap == 0).any()):
            continue
        img = image[i, :, y0:y1, x0:x1].permute(1, 2, 0).detach().double().cpu().numpy()
        cf = np.clip(estimate_alpha_cf(img, trimap), 0, 1)
        merged = np.where(unknown, blend * cf + (1 - blend) * a, a)
        out[i, 0, y0:y1, x0:x1] = torch.from_numpy(merged).to(out)
    return out
