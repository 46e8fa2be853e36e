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

