"""Compositing maths against hand-computed values: straight, premultiplied, linear light, placement, broadcasting."""

import pytest
import torch

from diffumatting.compositing import (alpha_over, checkerboard, composite, light_wrap, linear_to_srgb, place,
                                      placement_offset, srgb_to_linear)


def _px(v, c=3, h=1, w=1):
    return torch.tensor(v, dtype=torch.float32).reshape(1, c, 1, 1).expand(1, c, h, w).contiguous()


def test_straight_over_hand_values():
    fg, a, bg = _px([1.0, 0.5, 0.0]), _px([0.25], 1), _px([0.2, 0.4, 0.8])
    out = alpha_over(fg, a, bg)
    # 0.25*F + 0.75*B
    expected = torch.tensor([0.25 * 1.0 + 0.75 * 0.2, 0.25 * 0.5 + 0.75 * 0.4, 0.25 * 0.0 + 0.75 * 0.8])
    assert torch.allclose(out.flatten(), expected, atol=1e-6)


def test_premultiplied_over_hand_values():
    # premultiplied colour 0.25*(1, 0.5, 0) = (0.25, 0.125, 0)
    fg, a, bg = _px([0.25, 0.125, 0.0]), _px([0.25], 1), _px([0.2, 0.4, 0.8])
    out = alpha_over(fg, a, bg, premultiplied=True)
    expected = torch.tensor([0.25 + 0.75 * 0.2, 0.125 + 0.75 * 0.4, 0.0 + 0.75 * 0.8])
    assert torch.allclose(out.flatten(), expected, atol=1e-6)
    # same picture as the straight form of the same pixel
    assert torch.allclose(out, alpha_over(_px([1.0, 0.5, 0.0]), a, bg), atol=1e-6)


def test_linear_light_hand_values():
    # 50 % white over black: sRGB maths gives 0.5; linear light gives encode(0.5) = 0.7354
    out_srgb = alpha_over(_px([1.0, 1.0, 1.0]), _px([0.5], 1), _px([0.0, 0.0, 0.0]))
    out_lin = alpha_over(_px([1.0, 1.0, 1.0]), _px([0.5], 1), _px([0.0, 0.0, 0.0]), linear_light=True)
    assert torch.allclose(out_srgb, torch.full_like(out_srgb, 0.5))
    expected = 1.055 * 0.5 ** (1 / 2.4) - 0.055
    assert abs(expected - 0.735357) < 1e-5
    assert torch.allclose(out_lin, torch.full_like(out_lin, expected), atol=1e-5)
    # premultiplied input in linear light: unpremultiply first, the result is the same
    out_lin_p = alpha_over(_px([0.5, 0.5, 0.5]), _px([0.5], 1), _px([0.0, 0.0, 0.0]), premultiplied=True, linear_light=True)
    assert torch.allclose(out_lin_p, out_lin, atol=1e-5)


def test_srgb_curve_round_trip_and_known_value():
    x = torch.linspace(0, 1, 101).reshape(1, 1, 1, 101).expand(1, 3, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)
    mid = srgb_to_linear(torch.full((1, 3, 1, 1), 0.5))
    assert abs(float(mid[0, 0]) - ((0.5 + 0.055) / 1.055) ** 2.4) < 1e-6  # 0.2140


def test_alpha_extremes_and_range():
    g = torch.Generator().manual_seed(0)
    fg, bg = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    for lin in (False, True):
        assert torch.allclose(alpha_over(fg, torch.ones(2, 1, 8, 8), bg, linear_light=lin), fg, atol=1e-5)
        assert torch.allclose(alpha_over(fg, torch.zeros(2, 1, 8, 8), bg, linear_light=lin), bg, atol=1e-5)
        # resampling overshoot (a few per cent past [0, 1]) is clipped; further out is refused (hostile X3)
        out = alpha_over(fg * 1.08 - 0.04, torch.rand(2, 1, 8, 8, generator=g) * 1.08 - 0.04, bg, linear_light=lin)
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="alpha: expected values in"):
            alpha_over(fg, torch.rand(2, 1, 8, 8, generator=g) * 2 - 0.5, bg, linear_light=lin)


def test_broadcast_one_object_over_frames_and_many_over_one():
    fg, a = _px([1.0, 0.0, 0.0], h=4, w=4), _px([0.5], 1, 4, 4)
    frames = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    out = alpha_over(fg, a, frames)
    assert out.shape == (3, 3, 4, 4)
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([0.5, 0.75, 1.0]))
    out2 = alpha_over(fg.expand(3, -1, -1, -1), a, frames[:1])
    assert out2.shape == (3, 3, 4, 4)


def test_batch_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="batch sizes do not match"):
        alpha_over(torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(3, 3, 4, 4))
    with pytest.raises(ValueError, match="height and width must match"):
        alpha_over(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), torch.rand(1, 3, 5, 4))
    with pytest.raises(ValueError, match=r"alpha: expected a \[B,1,H,W\]"):
        alpha_over(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="alpha: size"):
        composite(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 5, 4), torch.rand(1, 3, 8, 8))


def test_placement_anchor_offsets():
    assert placement_offset((10, 20), (100, 200), 0.5, 0.5, "center") == (45, 90)
    assert placement_offset((10, 20), (100, 200), 0.0, 0.0, "top_left") == (0, 0)
    assert placement_offset((10, 20), (100, 200), 1.0, 1.0, "bottom_right") == (90, 180)
    assert placement_offset((10, 20), (100, 200), 0.5, 1.0, "bottom") == (90, 90)
    with pytest.raises(ValueError, match="anchor"):
        placement_offset((1, 1), (2, 2), 0, 0, "middle")


def test_composite_places_object_and_clips():
    fg = torch.ones(1, 3, 2, 2)
    a = torch.ones(1, 1, 2, 2)
    bg = torch.zeros(1, 3, 6, 8)
    img, cov = composite(fg, a, bg, x=1.0, y=1.0, anchor="top_left")  # starts at (6, 8): fully off canvas
    assert cov.sum() == 0 and img.sum() == 0
    img, cov = composite(fg, a, bg, x=0.0, y=0.0, anchor="center")  # centred on the corner: one pixel visible
    assert cov.sum() == 1 and cov[0, 0, 0, 0] == 1
    img, cov = composite(fg, a, bg, x=0.5, y=0.5, anchor="center", scale=2.0)  # 4x4 in the middle of 6x8
    assert cov.sum() == 16 and cov[0, 0, 1:5, 2:6].min() == 1
    assert torch.equal(img[:, :1], cov)


def test_composite_equals_alpha_over_for_same_size():
    g = torch.Generator().manual_seed(1)
    fg, a, bg = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    for lin in (False, True):
        img, cov = composite(fg, a, bg, linear_light=lin)
        assert torch.allclose(img, alpha_over(fg, a, bg, linear_light=lin), atol=1e-5)
        assert torch.allclose(cov, a)


def test_scaling_premultiplied_keeps_edges_clean():
    # A white object whose transparent pixels hold pure green (meaningless straight colour): after downscaling,
    # no green may leak into the edge because resampling works on premultiplied colour.
    fg = torch.zeros(1, 3, 16, 16)
    fg[:, 1] = 1.0
    fg[:, :, 4:12, 4:12] = 1.0
    a = torch.zeros(1, 1, 16, 16)
    a[:, :, 4:12, 4:12] = 1.0
    img, cov = composite(fg, a, torch.zeros(1, 3, 16, 16), scale=0.5)
    edge = (cov > 0) & (cov < 1)
    assert edge.any()
    r, gch = img[:, 0:1][edge], img[:, 1:2][edge]
    assert torch.allclose(r, gch, atol=1e-6)  # grey edge, no green tint


def test_place_validates_scale_and_position():
    with pytest.raises(ValueError, match="scale"):
        place(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), (8, 8), scale=0)
    with pytest.raises(ValueError, match="x: expected"):
        place(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4), (8, 8), x=5)


def test_light_wrap_only_touches_object_edges():
    a = torch.zeros(1, 1, 32, 32)
    a[:, :, 8:24, 8:24] = 1.0
    bg = torch.zeros(1, 3, 32, 32)
    bg[:, 0] = 1.0  # red background
    comp = alpha_over(torch.zeros(1, 3, 32, 32), a, bg)  # black object on red
    out = light_wrap(comp, a, bg, strength=1.0, radius=4)
    assert torch.equal(out[a.expand_as(out) == 0], comp[a.expand_as(comp) == 0])  # background untouched
    assert out[0, 0, 16, 16] < 1e-3  # object centre: far from the edge
    assert out[0, 0, 8, 16] > 0.2  # object edge picks up red
    assert out[0, 1].max() < 1e-6  # no colour that is not in the background
    assert torch.equal(light_wrap(comp, a, bg, strength=0.0), comp)
    with pytest.raises(ValueError, match="strength"):
        light_wrap(comp, a, bg, strength=2.0)


def test_checkerboard():
    board = checkerboard(4, 6, square=2)
    assert board.shape == (1, 3, 4, 6)
    assert board[0, 0, 0, 0] == pytest.approx(0.8) and board[0, 0, 0, 2] == pytest.approx(0.6)
    assert board[0, 0, 2, 0] == pytest.approx(0.6) and board[0, 0, 2, 2] == pytest.approx(0.8)


def test_dtype_and_half_input():
    fg, a, bg = torch.rand(1, 3, 4, 4).half(), torch.rand(1, 1, 4, 4).half(), torch.rand(1, 3, 4, 4).half()
    out = alpha_over(fg, a, bg)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("bad", ["fg", "alpha", "background"])
def test_nan_or_empty_inputs_are_refused_naming_the_input(bad):
    # issue #19 N3: a NaN used to pass through to the output
    def inputs():
        return {"fg": torch.rand(1, 3, 8, 8), "alpha": torch.rand(1, 1, 8, 8), "background": torch.rand(1, 3, 8, 8)}

    t = inputs()
    t[bad][0, 0, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=rf"^{bad}: holds 1 NaN or infinite"):
        alpha_over(t["fg"], t["alpha"], t["background"])
    with pytest.raises(ValueError, match=rf"^{bad}: holds 1 NaN or infinite"):
        composite(t["fg"], t["alpha"], t["background"], linear_light=True)
    t = inputs()
    t[bad] = t[bad][:0]
    with pytest.raises(ValueError, match=rf"^{bad}: empty"):
        alpha_over(t["fg"], t["alpha"], t["background"])


def test_light_wrap_radius_must_be_a_bounded_number():
    img, a = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    for radius in (float("nan"), 0.0, 1e6):
        with pytest.raises(ValueError, match=r"light_wrap radius: expected a number of pixels in \(0, 256\]"):
            light_wrap(img, a, img, strength=0.5, radius=radius)
