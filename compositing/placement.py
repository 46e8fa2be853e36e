"""Placing an object (straight fg + alpha) on a canvas: anchor, position, scale, clipping at the canvas edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Anchor name -> (fx, fy): the point of the object, as a fraction of its width/height, that lands on (x, y).
ANCHORS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top_left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top_right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "right": (1.0, 0.5),
    "bottom_left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom_right": (1.0, 1.0),
}

MAX_SCALE = 16.0


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Object size after scaling (at least 1 px a side)."""
    return max(1, round(h * scale)), max(1, round(w * scale))


def placement_offset(obj_hw: tuple[int, int], canvas_hw: tuple[int, int], x: float, y: float, anchor: str) -> tuple[int, int]:
    """Top-left pixel ``(top, left)`` of an object of ``obj_hw`` whose ``anchor`` lands at ``(x*W, y*H)`` of the canvas."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor: {anchor!r} is not one of {', '.join(ANCHORS)}")
    fx, fy = ANCHORS[anchor]
    (oh, ow), (ch, cw) = obj_hw, canvas_hw
    return round(y * ch - fy * oh), round(x * cw - fx * ow)


def resize_premultiplied(fg_premul: torch.Tensor, alpha: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """fg_premul [B,3,h,w], alpha [B,1,h,w] -> both at ``size`` (bilinear, antialiased when shrinking).

    Resampling premultiplied colour keeps transparent pixels (whose straight colour is meaningless) from bleeding
    into the edge.
    """
    if tuple(fg_premul.shape[-2:]) == tuple(size):
        return fg_premul, alpha
    both = torch.cat([fg_premul, alpha], dim=1)
    shrink = size[0] < both.shape[-2] or size[1] < both.shape[-1]
    out = F.interpolate(both, size=size, mode="bilinear", align_corners=False, antialias=shrink).clamp(0, 1)
    a = out[:, 3:4]
    return torch.minimum(out[:, :3], a.expand(-1, 3, -1, -1)), a


def paste(fg_premul: torch.Tensor, alpha: torch.Tensor, canvas_hw: tuple[int, int], top: int, left: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Object [B,3,h,w] premultiplied + [B,1,h,w] -> canvas-sized [B,3,H,W] + [B,1,H,W], zero (transparent) elsewhere.

    Parts of the object outside the canvas are clipped.
    """
    b, _, oh, ow = fg_premul.shape
    ch, cw = canvas_hw
    out_fg = fg_premul.new_zeros(b, 3, ch, cw)
    out_a = alpha.new_zeros(b, 1, ch, cw)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + oh, ch), min(left + ow, cw)
    if y1 > y0 and x1 > x0:
        out_fg[:, :, y0:y1, x0:x1] = fg_premul[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
        out_a[:, :, y0:y1, x0:x1] = alpha[:, :, y0 - top : y1 - top, x0 - left : x1 - left]
    return out_fg, out_a


def place(fg_premul: torch.Tensor, alpha: torch.Tensor, canvas_hw: tuple[int, int], x: float = 0.5, y: float = 0.5,
          scale: float = 1.0, anchor: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
    """fg_premul [B,3,h,w] + alpha [B,1,h,w] in [0,1] -> canvas-sized premultiplied fg [B,3,H,W] and alpha [B,1,H,W].

    ``x``, ``y``: where the object's ``anchor`` point lands, as a fraction of the canvas width/height (0.5, 0.5 =
    centre; values outside [0,1] move the object partly off the canvas). ``scale``: size factor on the object's own
    pixels (1 = unchanged).
    """
    if not (0 < scale <= MAX_SCALE):
        raise ValueError(f"scale: expected a factor in (0, {MAX_SCALE}], got {scale}")
    for name, v in (("x", x), ("y", y)):
        if not (-1.0 <= v <= 2.0):
            raise ValueError(f"{name}: expected a position fraction in [-1, 2] (0..1 spans the background), got {v}")
    size = scaled_size(fg_premul.shape[-2], fg_premul.shape[-1], scale)
    fg_premul, alpha = resize_premultiplied(fg_premul, alpha, size)
    top, left = placement_offset(size, canvas_hw, x, y, anchor)
    return paste(fg_premul, alpha, canvas_hw, top, left)
