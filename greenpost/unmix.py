"""Stage 5, the colour: straight foreground from the alpha and the local screen (unmixing), despill, spill map."""

from __future__ import annotations

import torch

from ..common.keycolour import key_difference
from .band import pixels

LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 weights


def unmix(image: torch.Tensor, alpha: torch.Tensor, screen: torch.Tensor, prior: torch.Tensor | None = None,
          reg: float = 0.01) -> torch.Tensor:
    """image [B,3,H,W] (or pixels [3,N]), alpha [B,1,H,W] (or [N]; 1 = opaque), screen broadcastable to image ->
    straight fg, image's shape, in [0,1].

    Solves ``I = a F + (1 - a) K`` for F in the least-squares sense with a ridge towards ``prior`` (default: the
    image itself): ``F = (a (I - (1 - a) K) + reg * prior) / (a^2 + reg)``. Exact where ``a^2 >> reg``; where alpha
    is small the (noisy) unmixed colour hands over to the prior.
    """
    if prior is None:
        prior = image
    num = alpha * (image - (1.0 - alpha) * screen) + reg * prior
    fg = num / (alpha * alpha + reg)
    return fg.clamp(0, 1)


def unmix_pixels(fg: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor, screen: torch.Tensor,
                 prior: torch.Tensor, reg: float) -> None:
    """In place on ``fg`` [B,3,H,W] (contiguous): :func:`unmix` of image [B,3,H,W] where 0 < alpha [B,1,H,W] < 1
    (opaque pixels are their own colour; fully transparent ones keep what ``fg`` holds, which no compositing shows),
    against screen [B,3,H,W] (or the flat key [B,3,1,1]) towards prior [B,3,H,W]. The semi-transparent pixels of
    the whole batch are gathered in one index (one host sync), so the cost follows the edges, not the image."""
    flat = ((alpha > 0) & (alpha < 1)).reshape(-1).nonzero().squeeze(1)
    if flat.numel() == 0:
        return
    hw = alpha.shape[-2] * alpha.shape[-1]
    bi, pix = flat // hw, flat % hw
    kk = pixels(screen, bi, pix) if screen.shape[-1] > 1 else screen[:, :, 0, 0][bi].T
    out = unmix(pixels(image, bi, pix), alpha.reshape(-1).index_select(0, flat), kk, pixels(prior, bi, pix), reg)
    fg.flatten(2)[bi, :, pix] = out.T


def despill(fg: torch.Tensor, high: torch.Tensor, strength: float = 1.0, luma_preserve: float = 0.0,
            limit: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """fg [B,3,H,W] in [0,1], high [B,3] key channels (bool, CPU) -> (despilled fg [B,3,H,W] in [0,1], spill amount
    [B,1,H,W] >= 0).

    Spill is the part of the key's dominant channels above the other channels (``G - max(R, B)`` for green, or
    ``G - (R + B) / 2`` with ``limit="avg"``); it is removed from those channels times ``strength``. With
    ``luma_preserve`` in [0, 1] that fraction of the removed luminance is added back equally to all channels, so
    despilled areas do not go dark.
    """
    if limit not in ("max", "avg"):
        raise ValueError(f"limit: expected 'max' or 'avg', got {limit!r}")
    hi = high.to(device=fg.device, dtype=fg.dtype)[:, :, None, None]
    if limit == "max":
        s = key_difference(fg, high)
    else:
        n_hi = hi.sum(dim=1, keepdim=True)
        big = torch.finfo(fg.dtype).max
        top = torch.where(hi > 0, fg, torch.full_like(fg, big)).amin(dim=1, keepdim=True)
        low_mean = (fg * (1 - hi)).sum(dim=1, keepdim=True) / (3 - n_hi).clamp_min(1)
        s = top - low_mean
    s = s.clamp_min_(0)
    if strength != 1.0:
        s = s.mul_(strength)
    if luma_preserve > 0:
        w = torch.tensor(LUMA, dtype=fg.dtype, device=fg.device).view(1, 3, 1, 1)
        dy = (s * hi * w).sum(dim=1, keepdim=True)
        out = torch.addcmul(fg, s, hi, value=-1.0).add_(luma_preserve * dy)
    else:
        out = torch.addcmul(fg, s, hi, value=-1.0)  # one pass: fg - s on the key channels, the others as they are
    return out.clamp_(0, 1), s


def spill_map(spill: torch.Tensor, screen_difference: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """spill [B,1,H,W] removed amount, screen_difference [B,1,H,W] the screen's, alpha [B,1,H,W] -> [B,1,H,W] in
    [0,1]: the share of the screen's key colour removed, 0 where the pixel is pure canvas."""
    return (spill / screen_difference).clamp_(0, 1) * (alpha > 0).float()
