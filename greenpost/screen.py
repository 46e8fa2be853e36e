"""Spatially varying estimates: scattered-data fill (push-pull) and the grid size of the low-resolution statistics."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def push_pull_fill(values: torch.Tensor, weights: torch.Tensor, full: float = 0.5) -> torch.Tensor:
    """values: [B,C,h,w], weights: [B,1,h,w] in [0,1] -> [B,C,h,w] smooth fill of the weighted values everywhere.

    Weighted pyramid down to 1x1 (push), then back up, keeping each level's own mean where its weight is at least
    ``full`` and blending towards the coarser estimate below that (pull). Pixels with zero weight everywhere in
    an image get that image's weighted mean (or 0 when every weight is 0).
    """
    v, w = values * weights, weights
    levels = [(v, w)]
    while min(v.shape[-2:]) > 1:
        v = F.avg_pool2d(v, 2, ceil_mode=True)
        w = F.avg_pool2d(w, 2, ceil_mode=True)
        levels.append((v, w))
    v, w = levels[-1]
    # coarsest level: mean over whatever is left (already ~1 px); an empty image keeps 0
    est = (v.sum(dim=(-2, -1), keepdim=True) / w.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12))
    est = est.expand_as(v)
    for v, w in reversed(levels):
        up = F.interpolate(est, size=v.shape[-2:], mode="bilinear", align_corners=False)
        own = v / w.clamp_min(1e-12)
        t = (w / full).clamp(0, 1)
        est = t * own + (1 - t) * up
    return est


def pool_factor(h: int, w: int, cells: int) -> int:
    """Downscale factor so that the long side has about ``cells`` cells."""
    return max(1, math.ceil(max(h, w) / cells))



def radial_trend(values: torch.Tensor, weights: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """values: [B,C,h,w], weights: [B,1,h,w] in [0,1] -> [B,C,h,w] per channel the weighted least-squares fit of
    ``c0 + c1 x + c2 y + c3 (x^2 + y^2)`` (isotropic coordinates about the image centre), clamped to the range of
    the weighted values widened by half that range. Fitted robustly (cells more than 3 robust deviations off the
    fit are dropped).

    Why: a lit screen has a linear gradient and a radial falloff (vignetting); under a large subject the plate is
    unseen, and a plain fill carries the border values inward. The radial term is one shared curvature, so a canvas
    seen only along one border still fixes it (from the border's own extent); the clamp keeps the extrapolation
    near what the canvas shows."""
    b, c, h, w = values.shape
    half = max(h, w) / 2
    ys = (torch.arange(h, device=values.device, dtype=values.dtype) + 0.5 - h / 2) / half
    xs = (torch.arange(w, device=values.device, dtype=values.dtype) + 0.5 - w / 2) / half
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * xx + yy * yy]).reshape(4, -1)  # [4,N]
    penalty = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=values.dtype, device=values.device)  # the level is free
    out = []
    for i in range(b):
        wt = weights[i, 0].reshape(-1)
        v = values[i].reshape(c, -1)
        if float(wt.sum()) < 8:  # too few canvas cells to fit four terms: flat
            mean = (v * wt).sum(dim=1) / wt.sum().clamp_min(1e-12)
            out.append(mean[:, None].expand(c, h * w).reshape(c, h, w))
            continue
        for _ in range(3):  # robust: cells far off the fit (a trace of the subject's edge) are dropped and refitted
            a = (basis * wt) @ basis.T + ridge * float(wt.sum()) * torch.diag(penalty)
            coef = torch.linalg.solve(a, (basis * wt) @ v.T)  # [4,C]
            fit = coef.T @ basis  # [C,N]
            dev = (v - fit).abs().amax(dim=0)
            spread = 1.4826 * dev[wt > 0].median()
            keep = (dev <= 3.0 * spread.clamp_min(1e-3)).to(wt.dtype)
            if bool((keep[wt > 0] > 0).all()) or float((wt * keep).sum()) < 8:
                break
            wt = wt * keep
        fit = fit.reshape(c, h, w)
        seen = wt > 0
        lo = v[:, seen].amin(dim=1)[:, None, None]
        hi = v[:, seen].amax(dim=1)[:, None, None]
        lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)  # a falloff may peak where the canvas is unseen
        out.append(torch.maximum(torch.minimum(fit, hi), lo))
    return torch.stack(out)
