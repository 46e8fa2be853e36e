"""Range checks shared by the keyer and the compositor (masks and colours handed in by users or other nodes)."""

from __future__ import annotations

import torch

# How far beyond [0, 1] a mask or colour may stray and still be clipped rather than refused: the ringing of bicubic /
# Lanczos resampling (an upscaled mask overshoots by a few per cent). Anything further out is a wrong input (an
# inverted or offset mask, 0-255 data) and is refused, not clipped to a silently wrong result.
UNIT_RANGE_SLACK = 0.05


def check_unit_range(name: str, t: torch.Tensor, slack: float = UNIT_RANGE_SLACK) -> None:
    """t: a finite float tensor (any shape) -> None; ValueError naming ``name`` when a value lies more than ``slack``
    outside [0, 1]."""
    if not t.is_floating_point() or t.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(t.detach()))
    if lo < -slack or hi > 1.0 + slack:
        hint = " (divide 8-bit data by 255)" if hi > 2.0 else " (an inverted or offset mask?)" if lo < 0 else ""
        raise ValueError(f"{name}: expected values in [0, 1], got [{lo:.3g}, {hi:.3g}]{hint}")
