"""Independent hostile pass of issue 19: masks far outside [0, 1] are refused (X3), high_quality takes booleans only
(X16); a few per cent of resampling overshoot is still clipped."""

from __future__ import annotations

import pytest
import torch

from diffumatting.compositing import composite
from diffumatting.greenpost import green_post


def _shot():
    img = torch.zeros(1, 3, 32, 32)
    img[:, 1] = 0.7
    img[..., 8:24, 8:24] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
    return img


@pytest.mark.parametrize("value", [-2.0, -0.5, 1.5, 255.0])
def test_green_post_refuses_an_alpha_far_outside_the_unit_range(value):
    """hostile X3: an inverted / offset / 8-bit mask is an error naming alpha, not a silently transparent result."""
    with pytest.raises(ValueError, match=r"^alpha: expected values in \[0, 1\]"):
        green_post(_shot(), alpha=torch.full((1, 1, 32, 32), value))


def test_green_post_clips_resampling_overshoot():
    """A bicubic-upscaled mask rings a few per cent past [0, 1]: still keyed, clipped to [0, 1]."""
    a = torch.ones(1, 1, 32, 32) * 1.03
    a[..., :4, :] = -0.02
    res = green_post(_shot(), alpha=a)
    assert float(res.alpha.min()) >= 0 and float(res.alpha.max()) <= 1


@pytest.mark.parametrize("name", ["fg", "alpha", "background"])
def test_composite_refuses_values_far_outside_the_unit_range(name):
    """hostile X3: AlphaComposite's core refuses an alpha of -3, fg x 3 or a background of -1, naming the input."""
    fg, a, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 3, 16, 16)
    bad = {"fg": fg * 3 + 0.5, "alpha": a - 3, "background": bg - 1}[name]
    args = {"fg": fg, "alpha": a, "background": bg, name: bad}
    with pytest.raises(ValueError, match=rf"^{name}: expected values in \[0, 1\]"):
        composite(args["fg"], args["alpha"], args["background"])


@pytest.mark.parametrize("value", ["no", "false", 2, None, 0.5])
def test_high_quality_takes_only_booleans(value):
    """hostile X16: green_post(high_quality='no') ran the high-quality mode; now a ValueError naming it."""
    with pytest.raises(ValueError, match="^high_quality: expected True or False"):
        green_post(_shot(), high_quality=value)


def test_high_quality_accepts_bools_and_0_1():
    for value in (True, False, 0, 1):
        green_post(_shot(), high_quality=value)
