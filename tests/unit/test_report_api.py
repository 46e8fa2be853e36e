"""Regression tests for the Python API cases of the bad-input report (issue #19): ``green_post(image, **options)``
with NaN, zero or huge options gives a ValueError naming the option (report P1-P8, in the report's order)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def composite():
    from diffumatting.synthetic import synthetic_matte

    fg, a = synthetic_matte(96, 7, "fine")
    green = torch.tensor([0.0, 177 / 255, 64 / 255])[:, None, None]
    return (a * fg + (1 - a) * green)[None]


@pytest.mark.parametrize("option, value", [
    pytest.param("refine_eps", float("nan"), id="report P1"), pytest.param("unmix_reg", float("nan"), id="report P2"),
    pytest.param("noise_black", float("nan"), id="report P3"),
    pytest.param("noise_white", float("nan"), id="report P4"),
    pytest.param("fg_model_tol", float("nan"), id="report P5"), pytest.param("screen_cells", 0, id="report P6"),
    pytest.param("fg_cells", 0, id="report P7"), pytest.param("refine_radius", 10**6, id="report P8")])
def test_bad_option_is_a_value_error_naming_it(composite, option, value):
    """report P1-P8: NaN output, ZeroDivisionError and MemoryError before; now a ValueError that starts with the
    option's name and states its range, before any work."""
    from diffumatting.greenpost import green_post

    with pytest.raises(ValueError, match=rf"^{option}: expected .* got ") as err:
        green_post(composite, **{option: value})
    assert "\n" not in str(err.value)
