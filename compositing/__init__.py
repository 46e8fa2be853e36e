"""Alpha compositing of straight (or premultiplied) objects onto images and video frames.

Public API: :func:`alpha_over` (the pixel maths), :func:`composite` (placement + broadcasting + options), light
wrap, placement helpers and a checkerboard for previews. Pure torch, batch-first ``[B,C,H,W]``.
"""

from __future__ import annotations

import torch

from .blend import _check, alpha_over, broadcast_batch, linear_to_srgb, srgb_to_linear, unpremultiply
from .light_wrap import light_wrap
from .placement import ANCHORS, place, placement_offset, scaled_size

__all__ = [
    "ANCHORS", "alpha_over", "broadcast_batch", "checkerboard", "composite", "light_wrap", "linear_to_srgb",
    "place", "placement_offset", "scaled_size", "srgb_to_linear", "unpremultiply",
]


def checkerboard(height: int, width: int, square: int = 16, light: float = 0.8, dark: float = 0.6,
                 device=None, dtype=torch.float32) -> torch.Tensor:
    """A grey checkerboard, the usual backdrop that shows transparency -> [1,3,H,W] in [0,1]."""
    if square < 1:
        raise ValueError(f"square: expected at least 1 px, got {square}")
    yy = torch.arange(height, device=device) // square
    xx = torch.arange(width, device=device) // square
    odd = ((yy[:, None] + xx[None, :]) % 2).to(dtype)
    board = light + (dark - light) * odd
    return board.expand(1, 3, height, width).contiguous()


def composite(fg: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, x: float = 0.5, y: float = 0.5,
              scale: float = 1.0, anchor: str = "center", premultiplied: bool = False, linear_light: bool = False,
              light_wrap_strength: float = 0.0, light_wrap_radius: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """fg [Bf,3,h,w] + alpha [Bf|1,1,h,w] (1 = opaque) over background [Bb,3,H,W], in [0,1] -> (image [B,3,H,W], alpha [B,1,H,W]).

    The object is scaled by ``scale`` and placed with its ``anchor`` at ``(x*W, y*H)`` (fractions of the background);
    what falls outside the background is clipped. The result has the background's size. Batches: equal, or one
    side 1 (one object over N frames, or N objects over one background); anything else is a ``ValueError``.
    The returned alpha is the placed object's coverage on the background (1 = object, 0 = background only).
    """
    _check("fg", fg, 3)
    _check("alpha", alpha, 1)
    _check("background", background, 3)
    if fg.shape[-2:] != alpha.shape[-2:]:
        raise ValueError(f"alpha: size {tuple(alpha.shape[-2:])} must match fg size {tuple(fg.shape[-2:])}")
    dtype = torch.promote_types(fg.dtype, torch.float32)
    fg, alpha, background = fg.to(dtype), alpha.to(fg.device, dtype), background.to(fg.device, dtype)
    # Object batch (fg/alpha) first, so a batch mismatch names the object inputs.
    _, obj = broadcast_batch({"fg": fg, "alpha": alpha})
    batch, _ = broadcast_batch({"fg": obj["fg"], "background": background})
    a = obj["alpha"].clamp(0, 1)
    fg_premul = torch.minimum(obj["fg"].clamp(0, 1), a.expand(-1, 3, -1, -1)) if premultiplied else obj["fg"].clamp(0, 1) * a
    canvas_hw = (background.shape[-2], background.shape[-1])
    fg_premul, a = place(fg_premul, a, canvas_hw, x=x, y=y, scale=scale, anchor=anchor)
    fg_premul = fg_premul.expand(batch, -1, -1, -1)
    a = a.expand(batch, -1, -1, -1)
    bg = background.expand(batch, -1, -1, -1).clamp(0, 1)
    out = alpha_over(fg_premul, a, bg, premultiplied=True, linear_light=linear_light)
    if light_wrap_strength > 0:
        out = light_wrap(out, a, bg, strength=light_wrap_strength, radius=light_wrap_radius)
    return out, a.contiguous()
