"""Straight foreground from a known key colour (unmixing), luminance-preserving despill, spill map."""

from __future__ import annotations

import torch

from ..common.keycolour import key_difference

LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights


def unmix(image: torch.Tensor, alpha: torch.Tensor, screen: torch.Tensor, prior: torch.Tensor | None = None,
          reg: float = 0.01) -> torch.Tensor:
    """image [B,3,H,W], alpha [B,1,H,W] (1 = opaque), screen [B,3,H,W] or [B,3,1,1] -> straight fg [B,3,H,W] in [0,1].

    Solves ``I = a F + (1 - a) K`` for F in the least-squares sense with a ridge towards ``prior`` (default: the
    image itself): ``F = (a (I - (1 - a) K) + reg * prior) / (a^2 + reg)``. Exact where ``a^2 >> reg``; where alpha
    is small the (noisy) unmixed colour hands over to the prior.
    """
    if prior is None:
        prior = image
    num = alpha * (image - (1.0 - alpha) * screen) + reg * prior
    fg = num / (alpha * alpha + reg)
    return fg.clamp(0, 1)


def despill(fg: torch.Tensor, high: torch.Tensor, strength: float = 1.0, luma_preserve: float = 0.0,
            limit: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """fg [B,3,H,W] in [0,1], high [B,3] key channels -> (despilled fg [B,3,H,W], spill amount [B,1,H,W] >= 0).

    Spill is the part of the key's dominant channels above the other channels (``G - max(R, B)`` for green, or
    ``G - (R + B) / 2`` with ``limit="avg"``); it is removed from those channels times ``strength``. With
    ``luma_preserve`` in [0, 1] that fraction of the removed luminance is added back equally to all channels, so
    despilled areas do not go dark.
    """
    if limit not in ("max", "avg"):
        raise ValueError(f"limit: expected 'max' or 'avg', got {limit!r}")
    hi = high[:, :, None, None].to(fg.dtype)
    if limit == "max":
        s = key_difference(fg, high)
    else:
        n_hi = hi.sum(dim=1, keepdim=True)
        big = torch.finfo(fg.dtype).max
        top = torch.where(hi > 0, fg, torch.full_like(fg, big)).amin(dim=1, keepdim=True)
        low_mean = (fg * (1 - hi)).sum(dim=1, keepdim=True) / (3 - n_hi).clamp_min(1)
        s = top - low_mean
    s = (s.clamp_min(0) * strength)
    removed = s * hi
    out = fg - removed
    if luma_preserve > 0:
        w = torch.tensor(LUMA, dtype=fg.dtype, device=fg.device).view(1, 3, 1, 1)
        dy = (removed * w).sum(dim=1, keepdim=True)
        out = out + luma_preserve * dy
    return out.clamp(0, 1), s
