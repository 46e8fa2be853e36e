"""Light wrap: let the background's light spill a little over the object's edges so it sits in the scene."""

from __future__ import annotations

import torch
from kornia.filters import gaussian_blur2d

MAX_RADIUS = 256.0  # px; the blur kernel is 3x the radius on each side


def _blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    sigma = max(float(radius), 1e-3) / 2.0
    k = int(2 * round(3 * sigma) + 1)
    return gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")


def light_wrap(composite: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, strength: float = 0.5,
               radius: float = 8.0) -> torch.Tensor:
    """composite [B,3,H,W], alpha [B,1,H,W] (object coverage, 1 = opaque), background [B,3,H,W] in [0,1] -> [B,3,H,W].

    ``w = strength * alpha * blur(1-alpha)`` is how much background surrounds an object pixel (0 deep inside the
    object and where there is no object); the object pixel is pulled towards the nearby background colour
    ``blur(B*(1-alpha)) / blur(1-alpha)`` by ``w``. ``radius`` is the reach in pixels. Result stays in [0,1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"light_wrap strength: expected a value in [0, 1], got {strength}")
    if not 0 < radius <= MAX_RADIUS:  # (also refuses NaN)
        raise ValueError(f"light_wrap radius: expected a number of pixels in (0, {MAX_RADIUS:g}], got {radius}")
    if strength == 0.0:
        return composite
    inv = 1 - alpha.clamp(0, 1)
    surround = _blur(inv, radius)
    near_bg = _blur(background * inv, radius) / surround.clamp_min(1e-4)
    w = strength * alpha.clamp(0, 1) * surround.clamp(0, 1)
    return (composite + w * (near_bg.clamp(0, 1) - composite)).clamp(0, 1)
