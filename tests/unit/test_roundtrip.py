"""Issue #20, RGBA in / RGBA out: the key-colour canvas of an object keys back to that object with its alpha as
guide, the automatic key colour avoids the object's colours (image and subject text), and the guide is followed
where the image is unchanged and overruled where it changed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffumatting.common.keychoice import choose_key_colours, hue_candidates, key_costs
from diffumatting.common.keycolour import KeyColour, parse_key_colour
from diffumatting.compositing import alpha_over
from diffumatting.green_control.prompt import choose_subject_key
from diffumatting.greenpost import green_post
from diffumatting.greenpost.guide import fit_guide
from diffumatting.matting_head.refine import key_image

H = W = 96


def _disc(h=H, w=W, cx=0.0, cy=0.0, radius=0.55, soft=0.12) -> torch.Tensor:
    """[1,1,h,w] alpha: an opaque disc with a soft (semi-transparent) rim and transparent corners."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
    return ((radius - r) / soft).clamp(0, 1)[None, None]


def _object(h=H, w=W) -> torch.Tensor:
    """[1,3,h,w] straight colour with texture: warm and neutral tones (nothing green, blue or magenta)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = 0.55 + 0.3 * torch.sin(xx * 7)
    g = 0.35 + 0.1 * yy
    b = 0.3 + 0.1 * torch.cos(yy * 5)
    return torch.stack([r, g, b])[None].clamp(0, 1)


def _canvas(fg, alpha, key: KeyColour) -> torch.Tensor:
    bg = key.tensor().view(1, 3, 1, 1).expand(fg.shape[0], 3, *fg.shape[-2:])
    return alpha_over(fg, alpha, bg)


def _flat(rgb, h=H, w=W) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).contiguous()


# ------------------------------------------------------------------------------------------------ canvas round trip


@pytest.mark.parametrize("preset", ["chroma_green", "magenta", "chroma_blue"])
def test_keying_the_canvas_with_its_own_alpha_as_guide_returns_the_object(preset):
    """Exact where alpha is 0 or 1 (within 1/255), and within 0.01 (alpha, premultiplied colour) on the soft rim."""
    fg, a = _object(), _disc()
    key = parse_key_colour(preset)
    res = green_post(_canvas(fg, a, key), key_colour=key, guide=a)
    hard = (a == 0) | (a == 1)
    opaque = a == 1
    assert bool(hard.any()) and bool((~hard).any())
    assert float((res.alpha - a).abs()[hard].max()) <= 1 / 255
    assert float((res.fg - fg).abs()[opaque.expand_as(fg)].max()) <= 1 / 255
    assert float((res.alpha - a).abs().max()) <= 0.01
    assert float((res.fg * res.alpha - fg * a).abs().max()) <= 0.01
    # the same through the pack's one keying entry point, which names what ran
    via = key_image(_canvas(fg, a, key), key_colour=key, guide=a)
    assert via.extras["keyer"] == "classical + guide"
    torch.testing.assert_close(via.alpha, res.alpha)


def test_the_guide_is_what_makes_the_round_trip_exact():
    """Without the guide GreenPost's own key of the same canvas misses the soft rim by far more: the guide is doing
    the work (the exactness above is not a property of any key of a clean canvas)."""
    fg, a = _object(), _disc(soft=0.3)
    key = parse_key_colour("chroma_green")
    canvas = _canvas(fg, a, key)
    own = green_post(canvas, key_colour=key).alpha
    guided = green_post(canvas, key_colour=key, guide=a).alpha
    assert float((guided - a).abs().max()) <= 0.01 < float((own - a).abs().max())


# ------------------------------------------------------------------------------------------------ auto key colour


@pytest.mark.parametrize("name, rgb, expected", [
    ("green frog", (0.25, 0.65, 0.15), "magenta"),
    ("lime", (0.55, 0.85, 0.2), "magenta"),
    ("dark green", (0.05, 0.35, 0.1), "magenta"),
    ("red", (0.8, 0.1, 0.1), "chroma_green"),
    ("blue", (0.1, 0.2, 0.8), "chroma_green"),
    ("grey", (0.5, 0.5, 0.5), "chroma_green"),
    ("white", (0.95, 0.95, 0.95), "chroma_green"),
    ("black", (0.05, 0.05, 0.05), "chroma_green"),
])
def test_auto_key_colour_avoids_the_objects_colours(name, rgb, expected):
    a = _disc()
    assert choose_key_colours(_flat(rgb), a)[0].preset == expected, name


def test_auto_key_colour_is_weighted_by_coverage():
    """An object mostly red with a small green part stays on green; mostly green with a red part goes on magenta;
    the colour of fully transparent pixels does not count."""
    a = _disc(radius=0.9, soft=0.05)
    yy = torch.linspace(0, 1, H)[:, None].expand(H, W)
    small = (yy < 0.1)[None, None]
    red, green = _flat((0.8, 0.1, 0.1)), _flat((0.2, 0.7, 0.15))
    assert choose_key_colours(torch.where(small, green, red), a)[0].preset == "chroma_green"
    assert choose_key_colours(torch.where(small, red, green), a)[0].preset == "magenta"
    hidden = torch.where(a > 0, red, green)  # green only where alpha is 0
    assert choose_key_colours(hidden, a)[0].preset == "chroma_green"
    costs = key_costs(torch.where(small, green, red), a)
    assert costs.shape == (1, 3) and float(costs[0, 0]) > 0  # the green part is seen, just outweighed


def test_auto_key_colour_one_per_batch_when_asked():
    a = _disc().expand(3, 1, H, W)
    fg = torch.cat([_flat((0.8, 0.1, 0.1)), _flat((0.2, 0.7, 0.15)), _flat((0.25, 0.6, 0.2))])
    each = [k.preset for k in choose_key_colours(fg, a)]
    assert each == ["chroma_green", "magenta", "magenta"]
    shared = choose_key_colours(fg, a, share=True)
    assert len({k.rgb for k in shared}) == 1 and shared[0].preset == "magenta"  # two green frames of three


def test_auto_key_colour_of_any_hue_stays_a_recognisable_screen():
    hues = hue_candidates()
    assert hues[0].word == "green" and len(hues) > 6
    pick = choose_key_colours(_flat((0.2, 0.7, 0.15)), _disc(), "hues")[0]
    assert pick.word != "green"
    # the chosen canvas is found again by GreenPost's own key-colour estimate (one of the screen hues)
    canvas = _canvas(_flat((0.2, 0.7, 0.15)), _disc(), pick)
    res = green_post(canvas)
    assert res.keys[0].found and float((res.key_colour[0] - pick.tensor()).abs().max()) < 0.05


@pytest.mark.parametrize("subject, preset", [
    ("a red apple", "chroma_green"),
    ("a green frog on a lily pad", "magenta"),
    ("Frogs", "magenta"),
    ("a bunch of fresh mint leaves", "magenta"),
    ("a pink flamingo among green leaves", "chroma_blue"),
    ("a greenhouse tomato", "chroma_green"),  # whole words only
    ("a blue car", "chroma_green"),
    ("", "chroma_green"),
])
def test_subject_text_picks_a_key_colour_it_does_not_name(subject, preset):
    chosen, why = choose_subject_key(subject)
    assert chosen == preset and why


# ------------------------------------------------------------------------------------------------ the guide path


def _round(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round() / 255  # what an image workflow hands back: 8-bit


def test_an_unchanged_image_keeps_the_guide():
    """8-bit canvas, keyed with the guide: alpha within 0.02 everywhere, mean error below 0.002."""
    fg, a = _object(), _disc(soft=0.3)
    key = parse_key_colour("chroma_green")
    res = green_post(_round(_canvas(fg, a, key)), key_colour=key, guide=a)
    err = (res.alpha - a).abs()
    assert float(err.max()) <= 0.02 and float(err.mean()) <= 0.002
    assert float(res.extras["guide_weight"].max()) < 0.5  # nowhere did the own key take over


def test_the_guide_follows_a_changed_region():
    """A new opaque object painted on the canvas (the guide says transparent there) is keyed opaque; a part of the
    object repainted as canvas (an inpaint that removed it) is keyed transparent; the rest keeps the guide."""
    fg, a = _object(), _disc(cx=-0.25, radius=0.45, soft=0.15)
    key = parse_key_colour("chroma_green")
    image = _canvas(fg, a, key).clone()
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    added = ((xx > 78) & (xx < 92) & (yy > 10) & (yy < 30))[None, None]  # guide is 0 here
    image = torch.where(added, torch.tensor([0.8, 0.6, 0.2]).view(1, 3, 1, 1), image)
    removed = ((xx > 30) & (xx < 42) & (yy > 42) & (yy < 54))[None, None]  # inside the opaque core
    assert float(a[removed].min()) == 1.0 and float(a[added].max()) == 0.0
    image = torch.where(removed, key.tensor().view(1, 3, 1, 1), image)
    res = green_post(_round(image), key_colour=key, guide=a)
    inner_add = F.max_pool2d(added.float(), 3, 1, 1) * 0 + (-F.max_pool2d(-added.float(), 5, 1, 2))  # eroded
    inner_rem = -F.max_pool2d(-removed.float(), 5, 1, 2)
    assert float(res.alpha[inner_add > 0].min()) > 0.95
    assert float(res.alpha[inner_rem > 0].max()) < 0.05
    untouched = (F.max_pool2d((added | removed).float(), 9, 1, 4) == 0)
    assert float((res.alpha - a).abs()[untouched].max()) <= 0.02


def test_a_smaller_guide_is_upsampled_along_the_new_image():
    """An image upscaled 2x and a guide at the old size: the result has the image's size and is as close to the
    full-size alpha as upsampling the alpha itself (bicubic), and the fit never leaves [0, 1]."""
    fg, a = _object(128, 128), _disc(128, 128, soft=0.06)
    key = parse_key_colour("chroma_green")
    small_canvas = F.interpolate(_canvas(fg, a, key), scale_factor=0.5, mode="area")
    small_alpha = F.interpolate(a, scale_factor=0.5, mode="area")
    up = F.interpolate(small_canvas, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    res = green_post(up, key_colour=key, guide=small_alpha)
    assert res.alpha.shape == a.shape
    bicubic = F.interpolate(small_alpha, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    mse = lambda x: float(((x - a) ** 2).mean())  # noqa: E731
    assert mse(res.alpha) <= 1.05 * mse(bicubic)
    fitted = fit_guide(small_alpha, up)
    assert fitted.shape == a.shape and 0 <= float(fitted.min()) and float(fitted.max()) <= 1
    # a larger guide (the image was downscaled) is area-averaged to the image's size
    assert fit_guide(a, small_canvas).shape == small_alpha.shape


def test_bad_guides_are_refused_with_the_input_named():
    fg, a = _object(), _disc()
    image = _canvas(fg, a, parse_key_colour("chroma_green"))
    with pytest.raises(ValueError, match="guide: pass either alpha"):
        green_post(image, alpha=a, guide=a)
    with pytest.raises(ValueError, match="guide: .*aspect ratio"):
        green_post(image, guide=a[..., :48])
    with pytest.raises(ValueError, match="guide: contains NaN"):
        green_post(image, guide=torch.full_like(a, float("nan")))
    with pytest.raises(ValueError, match="guide: expected"):
        green_post(image, guide=a.expand(2, 1, H, W).reshape(2, 1, H, W).repeat(2, 1, 1, 1))
    with pytest.raises(ValueError, match="guide: expected a torch tensor"):
        green_post(image, guide=[[0.5]])
