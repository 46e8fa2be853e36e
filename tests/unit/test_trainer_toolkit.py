"""The training toolkit's small parts: LR schedule, seeding, colour jitter, composite, pair loader."""

from __future__ import annotations

import math

import pytest
import torch

from diffumatting.trainer.augment import ColourJitter, green_canvas, over, random_crop
from diffumatting.trainer.schedule import lr_factor, lr_scheduler
from diffumatting.trainer.seeding import sample_generator, sample_seed


def test_lr_factor_hand_values():
    # warm-up of 4 steps: 1/4, 2/4, 3/4, then 1 (constant) or the cosine from 1 down to the floor
    assert [lr_factor(s, 100, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(4, 104, 4, "cosine", 0.05) == pytest.approx(1.0)
    assert lr_factor(54, 104, 4, "cosine", 0.05) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(104, 104, 4, "cosine", 0.05) == pytest.approx(0.05)
    assert lr_factor(500, 104, 4, "cosine", 0.05) == pytest.approx(0.05)  # past the end: stays at the floor
    assert lr_factor(0, 10, 0, "cosine", 0.0) == pytest.approx(1.0)


def test_scheduler_drives_the_optimizer_and_a_resume_follows_the_new_total():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = lr_scheduler(opt, steps=10, warmup=2, decay="cosine", floor=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0 * lr_factor(s, 10, 2, "cosine", 0.0) for s in range(10)])
    state = sched.state_dict()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    longer = lr_scheduler(opt2, steps=20, warmup=2, decay="cosine", floor=0.0)
    longer.load_state_dict(state)
    opt2.step()
    longer.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(2.0 * lr_factor(11, 20, 2, "cosine", 0.0))
    with pytest.raises(ValueError, match="decay"):
        lr_scheduler(opt, 10, decay="step")
    with pytest.raises(ValueError, match="warmup"):
        lr_scheduler(opt, 10, warmup=-1)


def test_sample_seed_is_a_pure_function_of_seed_and_keys():
    assert sample_seed(5, 3) == sample_seed(5, 3)
    seeds = {sample_seed(5, i) for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2 ** 63 for s in seeds)
    assert sample_seed(5, 3) != sample_seed(6, 3) and sample_seed(5, "noise", 3) != sample_seed(5, "order", 3)
    # the value does not depend on what was drawn before (no hidden state)
    a = torch.rand(4, generator=sample_generator(1, "x", 2))
    torch.rand(100, generator=sample_generator(1, "x", 1))
    b = torch.rand(4, generator=sample_generator(1, "x", 2))
    assert torch.equal(a, b)
    # neighbouring indices are unrelated (not shifted copies of one stream)
    s0 = torch.rand(8, generator=sample_generator(1, 0))
    s1 = torch.rand(8, generator=sample_generator(1, 1))
    assert not any(torch.equal(s0[i:], s1[: 8 - i]) for i in range(8))


def test_colour_jitter_is_identity_at_zero_deterministic_and_in_range():
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    zero = ColourJitter(0, 0, 0, 0, 0)
    assert torch.equal(zero(img, torch.Generator().manual_seed(1)), img)
    jit = ColourJitter(0.3, 0.3, 0.3, 0.2, 0.3)
    a = jit(img, torch.Generator().manual_seed(1))
    b = jit(img, torch.Generator().manual_seed(1))
    c = jit(img, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.allclose(a, img, atol=1e-3)
    assert a.shape == img.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    batch = jit(img[None].expand(2, -1, -1, -1), torch.Generator().manual_seed(1))
    assert batch.shape == (2, 3, 16, 16) and torch.allclose(batch[0], a, atol=1e-6)
    # a zero strength still draws its five numbers: the generator ends in the same state either way
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    zero(img, g1)
    jit(img, g2)
    assert torch.equal(g1.get_state(), g2.get_state())
    s = ColourJitter.strength(0.5)
    assert (s.brightness, s.contrast, s.saturation, s.hue) == (0.5, 0.5, 0.5, pytest.approx(0.5 * math.pi / 5))
    with pytest.raises(ValueError, match="jitter"):
        ColourJitter.strength(2.0)
    with pytest.raises(ValueError, match="gamma"):
        ColourJitter(gamma=-0.1)


def test_over_is_the_alpha_composite_for_items_batches_and_key_colours():
    fg = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    a = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).view(1, 2, 2)
    key = torch.tensor([0.0, 1.0, 0.0])
    out = over(fg, a, key)
    want = a * fg + (1 - a) * key.view(3, 1, 1)
    assert torch.allclose(out, want, atol=1e-7)
    assert torch.allclose(over(fg[None], a[None], want[None] * 0 + key.view(1, 3, 1, 1)), want[None], atol=1e-7)


def test_green_canvas_and_random_crop():
    g = torch.Generator().manual_seed(0)
    flat = green_canvas(8, 8, (0, 1, 0), False)
    assert torch.equal(flat, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 8, 8))
    lit = green_canvas(16, 16, (0, 1, 0), True, g)
    assert lit.shape == (3, 16, 16) and 0 <= lit.min() and lit.max() <= 1 and lit.std() > 0
    fg, a = torch.rand(3, 40, 40), torch.rand(1, 40, 40)
    cf, ca = random_crop(fg, a, 64, g)  # bigger than the image: padded with alpha 0
    assert cf.shape == (3, 64, 64) and ca.shape == (1, 64, 64) and float(ca[0, 0, 0]) == 0.0


def test_pair_loader_reads_both_layouts_names_subjects_and_names_bad_files(tmp_path):
    from diffumatting.common.images import save_png
    from diffumatting.synthetic import synthetic_matte
    from diffumatting.trainer.pairs import load_pairs

    fg, a = synthetic_matte(40, 2)
    save_png(tmp_path / "flat" / "cup" / "image.png", fg)
    save_png(tmp_path / "flat" / "cup" / "alpha.png", a.expand(3, -1, -1))
    save_png(tmp_path / "flat" / "vase" / "fg.png", fg)
    save_png(tmp_path / "flat" / "vase" / "alpha.png", None, a)
    pairs = load_pairs(tmp_path / "flat")
    assert [p.name for p in pairs] == ["cup", "vase"] and pairs[0].alpha.shape == (1, 40, 40)
    assert torch.allclose(pairs[0].alpha, a, atol=1 / 255 + 1e-6) and torch.allclose(pairs[1].alpha, a, atol=1 / 255 + 1e-6)
    assert [p.name for p in load_pairs(tmp_path / "flat", ["vase"])] == ["vase"]
    with pytest.raises(ValueError, match=r"subjects \['nope'\] not found"):
        load_pairs(tmp_path / "flat", ["nope"])
    save_png(tmp_path / "par" / "fg" / "s0.png", fg)
    save_png(tmp_path / "par" / "alpha" / "s0.png", None, a)
    assert [p.name for p in load_pairs(tmp_path / "par")] == ["s0"]
    save_png(tmp_path / "bad" / "x" / "fg.png", fg)
    save_png(tmp_path / "bad" / "x" / "alpha.png", None, a[:, :30])
    with pytest.raises(ValueError, match="subject 'x'.*does not match"):
        load_pairs(tmp_path / "bad")
    with pytest.raises(ValueError, match=r"no \(fg\|image, alpha\) pairs"):
        load_pairs(tmp_path / "par" / "fg")
