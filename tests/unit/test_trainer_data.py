"""Unit tests of the trainer's Green100K-style data builder (trainer/data.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from diffumatting.common.images import save_png
from diffumatting.synthetic import synthetic_matte, write_synthetic_folder
from diffumatting.trainer.data import (
    DataOptions,
    GreenDataset,
    build_prompt,
    clean_folder_caption,
    collate,
    names_word,
    scan_folder,
)
from diffumatting.trainer.augment import over
from diffumatting.trainer.losses import background_mask, transition_band

GREEN = torch.tensor([0.0, 177.0, 64.0]) / 255.0  # DataOptions's default key: chroma green #00B140


def opts(**kw):
    base = dict(resolution=64, caption_dropout=0.0, jitter=0.0, cache_items=0)
    base.update(kw)
    return DataOptions(**base)


def test_item_contents_and_masks(tmp_path):
    write_synthetic_folder(tmp_path, 3, 48, seed=1, caption="a fluffy toy")
    ds = GreenDataset(tmp_path, opts())
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["alpha"].shape == (1, 64, 64)
    assert item["bg"].shape == (1, 8, 8) and item["band"].shape == (1, 8, 8)
    assert item["prompt"] == "a fluffy toy, isolated on a plain green screen background"
    assert item["has_key_word"]
    # composite onto the key colour, masks consistent with the loss helpers
    assert torch.allclose(item["image"], over(item["fg"], item["alpha"], GREEN), atol=1e-6)
    a = item["alpha"][None]
    assert torch.equal(item["bg"], background_mask(a)[0])
    assert torch.equal(item["band"], transition_band(a, ds.opts.band_radius)[0])
    assert set(item["trimap"].unique().tolist()) <= {0.0, 0.5, 1.0}
    # the canvas far from the subject is exactly green
    far = item["alpha"][0] == 0
    assert torch.allclose(item["image"][:, far], GREEN.view(3, 1).expand(3, int(far.sum())))


def test_subject_scale_and_position_stay_in_range(tmp_path):
    write_synthetic_folder(tmp_path, 4, 64, seed=10)
    ds = GreenDataset(tmp_path, opts(scale=(0.5, 0.6)))
    for i in range(4):
        a = ds[i]["alpha"][0] > 0.01
        ys, xs = torch.nonzero(a, as_tuple=True)
        side = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
        assert 0.45 * 64 <= side <= 0.62 * 64


def test_flips_and_jitter_change_sample_but_keep_alpha_mass(tmp_path):
    write_synthetic_folder(tmp_path, 1, 64, seed=3)
    plain = GreenDataset(tmp_path, opts(scale=(0.9, 0.9), hflip=0.0))
    flipped = GreenDataset(tmp_path, opts(scale=(0.9, 0.9), hflip=1.0))
    a0, a1 = plain[0]["alpha"], flipped[0]["alpha"]
    assert a0.sum().item() == pytest.approx(a1.sum().item(), rel=0.05)
    jit = GreenDataset(tmp_path, opts(scale=(0.9, 0.9), hflip=0.0, jitter=0.5))
    assert not torch.allclose(plain[0]["fg"], jit[0]["fg"])


def test_deterministic_per_seed_epoch_index(tmp_path):
    write_synthetic_folder(tmp_path, 2, 64, seed=0)
    d1 = GreenDataset(tmp_path, opts(jitter=0.2), seed=5)
    d2 = GreenDataset(tmp_path, opts(jitter=0.2), seed=5)
    assert torch.equal(d1[1]["image"], d2[1]["image"])
    d2.epoch = 1
    assert not torch.equal(d1[1]["image"], d2[1]["image"])


def test_captions_folder_names_and_dropout(tmp_path):
    for name in ("red_apples", "cat-001"):
        write_synthetic_folder(tmp_path / name, 1, 32, seed=0, caption=None)
    # the sample folders are synth_000000 (an id): the caption falls back to... the sample folder name cleaned
    assert clean_folder_caption("red_apples") == "red apples"
    assert clean_folder_caption("GT01") == ""
    assert clean_folder_caption("synth_000004") == "synth"
    assert build_prompt("", "on green") == "on green"
    ds = GreenDataset(tmp_path, opts(default_caption="a thing"))
    assert {ds[i]["prompt"] for i in range(2)} == {"synth, isolated on a plain green screen background"}
    dropped = GreenDataset(tmp_path, opts(caption_dropout=1.0))
    assert dropped[0]["prompt"] == "" and not dropped[0]["has_key_word"]


def test_parallel_layout_and_sidecar_captions(tmp_path):
    for i in range(2):
        fg, alpha = synthetic_matte(40, i)
        save_png(tmp_path / "fg" / f"s{i}.png", fg)
        save_png(tmp_path / "alpha" / f"s{i}.png", None, alpha)
    (tmp_path / "caption").mkdir()
    (tmp_path / "caption" / "s1.txt").write_text("\na glass vase\nsecond line\n")
    samples = scan_folder(tmp_path)
    assert [s.colour.name for s in samples] == ["s0.png", "s1.png"] and all(s.is_fg for s in samples)
    ds = GreenDataset(tmp_path, opts())
    assert ds[1]["prompt"].startswith("a glass vase, ")
    assert ds[0]["prompt"].startswith(tmp_path.name.split("_")[0]) or ds[0]["prompt"].startswith("an object")


def test_bad_samples_are_skipped_and_counted(tmp_path, caplog):
    write_synthetic_folder(tmp_path, 2, 48, seed=0)
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "image.png").write_bytes(b"not a png")
    (bad / "alpha.png").write_bytes(b"nope")
    mism = tmp_path / "mismatch"
    fg, alpha = synthetic_matte(48, 0)
    save_png(mism / "fg.png", fg)
    save_png(mism / "alpha.png", None, alpha[:, :40, :])
    empty = tmp_path / "empty"
    save_png(empty / "fg.png", fg)
    save_png(empty / "alpha.png", None, torch.zeros_like(alpha))
    ds = GreenDataset(tmp_path, opts())
    assert len(ds) == 5
    with caplog.at_level(logging.WARNING, logger="diffumatting.trainer"):
        items = [ds[i] for i in range(len(ds))]
    assert all(it["image"].shape == (3, 64, 64) for it in items)
    assert dict(ds.skipped) == {"unreadable": 1, "size mismatch": 1, "empty alpha": 1}
    assert "3 skipped" in ds.report()
    assert sum("skipping sample" in r.message for r in caplog.records) == 3
    # every item comes from a good sample
    assert {it["index"] for it in items} <= {i for i, s in enumerate(ds.samples) if s.colour.parent.name.startswith("synth")}


def test_all_bad_raises_clear_error(tmp_path):
    empty = tmp_path / "empty"
    fg, alpha = synthetic_matte(32, 0)
    save_png(empty / "fg.png", fg)
    save_png(empty / "alpha.png", None, torch.zeros_like(alpha))
    ds = GreenDataset(tmp_path, opts())
    with pytest.raises(ValueError, match="no usable sample"):
        ds[0]


def test_in_memory_sources_and_collate():
    pairs = [(*synthetic_matte(40, i), "a shape") for i in range(3)]
    ds = GreenDataset(pairs, opts(key_colour="#0000ff"))
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 64, 64) and batch["bg"].shape == (3, 1, 8, 8)
    assert batch["has_key_word"].dtype == torch.bool and batch["prompt"][0].startswith("a shape")
    # blue key colour on the canvas
    corner = batch["image"][0, :, 0, 0] if batch["alpha"][0, 0, 0, 0] == 0 else None
    if corner is not None:
        assert torch.allclose(corner, torch.tensor([0.0, 0.0, 1.0]))


def test_bad_options_and_folders(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        DataOptions(resolution=100)
    with pytest.raises(ValueError, match="scale"):
        DataOptions(scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="caption_dropout"):
        DataOptions(caption_dropout=1.5)
    with pytest.raises(ValueError, match="band_radius"):  # #19 T5: every sample would fail later otherwise
        DataOptions(band_radius=-1)
    with pytest.raises(ValueError, match="data"):
        GreenDataset(tmp_path, opts())
    with pytest.raises(ValueError, match="data"):
        scan_folder(tmp_path / "missing")


def test_names_word():
    assert names_word("isolated on a pure green screen background", "green")
    assert names_word("on Greens", "green") and not names_word("on evergreen", "green")
    assert not names_word("on a plain background", "green")
