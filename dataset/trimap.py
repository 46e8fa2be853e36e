"""Trimaps from alpha mattes: known foreground, known background, and an unknown band around the transition."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FG, UNKNOWN, BG = 1.0, 0.5, 0.0
MAX_TRIMAP_RADIUS = 256  # px: wider bands are no use for matting and cost O(radius^2) per pixel


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return 1 - F.max_pool2d(1 - mask, k, stride=1, padding=radius)


def make_trimap(alpha: torch.Tensor, radius: int = 10, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """alpha: [B,1,H,W] in [0,1] (1 = opaque) -> trimap [B,1,H,W] with 1 = foreground, 0.5 = unknown, 0 = background.

    Known foreground is ``alpha >= high`` eroded by ``radius`` px; known background is ``alpha <= low`` eroded by
    ``radius`` px; everything else (the soft transition plus a band of ``radius`` px each side) is unknown.
    Saved as PNG this is the usual 255 / 128 / 0 trimap that matting code reads.
    """
    if alpha.ndim != 4 or alpha.shape[1] != 1:
        raise ValueError(f"alpha: expected [B,1,H,W], got {tuple(alpha.shape)}")
    if isinstance(radius, bool) or not isinstance(radius, int) or not 0 <= radius <= MAX_TRIMAP_RADIUS:
        raise ValueError(f"radius: expected a whole number of pixels in 0..{MAX_TRIMAP_RADIUS}, got {radius!r}")
    a = alpha.float()
    fg = _erode((a >= high).float(), radius)
    bg = _erode((a <= low).float(), radius)
    tri = torch.full_like(a, UNKNOWN)
    tri = torch.where(fg > 0.5, torch.full_like(a, FG), tri)
    tri = torch.where(bg > 0.5, torch.full_like(a, BG), tri)
    return tri.to(alpha.dtype)
