"""Unit tests of the procedural synthetic mattes (synthetic/)."""

from __future__ import annotations

import pytest
import torch

from diffumatting.synthetic import synthetic_batch, synthetic_matte, write_synthetic_folder


@pytest.mark.parametrize("size,hw", [(64, (64, 64)), ((48, 80), (48, 80))])
def test_shapes_dtype_range(size, hw):
    fg, alpha = synthetic_matte(size, 3)
    assert fg.shape == (3, *hw) and alpha.shape == (1, *hw)
    assert fg.dtype == torch.float32 and alpha.dtype == torch.float32
    for t in (fg, alpha):
        assert torch.isfinite(t).all()
        assert t.min() >= 0.0 and t.max() <= 1.0


def test_deterministic_per_seed_and_varies_across_seeds():
    a1 = synthetic_matte(64, 11)
    a2 = synthetic_matte(64, 11)
    b = synthetic_matte(64, 12)
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    assert not torch.equal(a1[1], b[1])


def test_alpha_has_opaque_core_transition_and_background():
    for seed in range(20):
        _, alpha = synthetic_matte(128, seed)
        assert (alpha > 0.98).any(), f"seed {seed}: no opaque core"
        assert ((alpha > 0.02) & (alpha < 0.98)).any(), f"seed {seed}: no transition region"
        assert (alpha < 0.01).float().mean() > 0.2, f"seed {seed}: too little background"


def test_variety_includes_strands_and_semi_transparency():
    # Over 40 seeds at least some samples have a large partial-alpha share (veils, soft edges, strands).
    fractions = []
    for seed in range(40):
        _, alpha = synthetic_matte(128, seed)
        fractions.append(((alpha > 0.02) & (alpha < 0.98)).float().mean().item())
    assert max(fractions) > 0.1
    assert min(fractions) < 0.05


def test_foreground_is_not_key_green():
    for seed in range(20):
        fg, alpha = synthetic_matte(64, seed)
        w = alpha[0] > 0.5
        mean = fg[:, w].mean(dim=1)
        assert not (mean[1] > mean[0] + 0.2 and mean[1] > mean[2] + 0.2), f"seed {seed}: green subject {mean}"


def test_batch_matches_single_samples():
    fg, alpha = synthetic_batch(3, 32, 5)
    assert fg.shape == (3, 3, 32, 32) and alpha.shape == (3, 1, 32, 32)
    assert torch.equal(alpha[2], synthetic_matte(32, 7)[1])


@pytest.mark.parametrize("size", [8, (32,), (32, 0), "64", 64.0, True])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        synthetic_matte(size, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", None])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="seed"):
        synthetic_matte(32, seed)


def test_write_folder_roundtrip(tmp_path):
    from diffumatting.common.images import load_image

    paths = write_synthetic_folder(tmp_path, 2, 32, seed=4, caption="a thing")
    assert len(paths) == 2
    fg, alpha = synthetic_matte(32, 5)
    loaded = load_image(f"{paths[1]}/alpha.png")
    assert torch.allclose(loaded.rgb[:1], alpha, atol=1 / 255 + 1e-6)
    assert (tmp_path / "synth_000004" / "caption.txt").read_text().strip() == "a thing"
    assert not list(tmp_path.rglob("*.partial*"))


def test_fine_family_is_deterministic_in_range_and_mostly_fine_structure():
    from diffumatting.synthetic.procedural import _feathers

    fg, a = synthetic_matte((40, 56), 11, "fine")
    fg2, a2 = synthetic_matte((40, 56), 11, "fine")
    assert fg.shape == (3, 40, 56) and a.shape == (1, 40, 56)
    assert torch.equal(fg, fg2) and torch.equal(a, a2)
    assert 0 <= float(fg.min()) and float(fg.max()) <= 1 and 0 <= float(a.min()) and float(a.max()) <= 1
    # feathers and dandelion tufts: sub-pixel shafts and barbs -> mostly partial coverage where there is coverage
    fractions = []
    for seed in range(6):
        f = _feathers(torch.Generator().manual_seed(seed), 96, 96)
        assert f.shape == (96, 96) and 0 <= float(f.min()) and float(f.max()) <= 1
        covered = f > 0.02
        assert covered.float().mean() > 0.02, "a feather matte should cover part of the crop"
        fractions.append(float(((f > 0.02) & (f < 0.98)).sum() / covered.sum()))
    assert sum(fractions) / len(fractions) > 0.5
    # the family mixes every kind: over many seeds some mattes are mostly partial coverage (feathers), some not
    partial = [float(((m > 0.02) & (m < 0.98)).float().mean() / (m > 0.02).float().mean().clamp_min(1e-6))
               for m in (synthetic_matte(64, s, "fine")[1] for s in range(24))]
    assert max(partial) > 0.6 and min(partial) < 0.3


def test_mixed_family_draws_both_families_by_seed_and_bad_family_raises():
    kinds = set()
    for seed in range(12):
        m = synthetic_matte(32, seed, "mixed")[1]
        kinds.add("shapes" if torch.equal(m, synthetic_matte(32, seed, "shapes")[1]) else
                  "fine" if torch.equal(m, synthetic_matte(32, seed, "fine")[1]) else "?")
    assert kinds == {"shapes", "fine"}
    with pytest.raises(ValueError, match="family"):
        synthetic_matte(32, 0, "feathers")
    with pytest.raises(ValueError, match="size"):
        synthetic_matte(8, 0, "fine")
