"""Regression tests for the core cases of the hostile-input pass (issue #19 part 2, ``/tmp/hostile/findings.md``).

One test per case id, named ``hostile <ID>`` in its docstring: long file names (X1), multi-frame and non-regular
inputs (X12, X13), data-set files (X9, X10, X15), train-head settings (X7, X8, X17), the plan bound (X6) and the
key-colour identity (X19).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import types

import numpy as np
import pytest
import torch
from PIL import Image

from diffumatting.common.files import FileNameTooLong, atomic_write_bytes, temp_prefix
from diffumatting.common.images import load_image, save_png
from diffumatting.common.keycolour import KeyColour, as_key_colour, expand_key_colours, parse_key_colour
from diffumatting.dataset import MattingDatasetWriter, check_text, prepare_sample
from diffumatting.factory.plan import MAX_PLAN, Plan
from diffumatting.trainer import checkpoint
from diffumatting.trainer.head import ConfigError, TrainConfig, check_loss_weights, max_workers, train_head

QUIET = {"progress": False, "log_fn": lambda *_: None}


# ---------------------------------------------------------------------------------------------------------- X1


def test_hostile_x1_a_long_but_valid_name_is_written(tmp_path):
    """hostile X1: a 245-byte name (under 255) is written; the temporary name is cut short, not the file's."""
    path = tmp_path / ("b" * 236 + "_rgba.png")
    save_png(path, torch.rand(3, 8, 8), torch.rand(1, 8, 8))
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert len(temp_prefix(path.name, ".png").encode()) + 8 + len(".partial.png") <= 255


def test_hostile_x1_a_name_over_the_limit_is_a_one_line_value_error(tmp_path):
    """hostile X1: a 305-byte name -> FileNameTooLong (a ValueError and an OSError) naming the file; nothing left."""
    path = tmp_path / ("p" * 300 + ".png")
    with pytest.raises(ValueError, match=r"is 304 bytes long; this file system allows at most 255") as err:
        atomic_write_bytes(path, b"x")
    assert isinstance(err.value, OSError) and isinstance(err.value, FileNameTooLong)
    assert str(path) in str(err.value) and "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_hostile_x1_stale_temp_files_of_a_long_checkpoint_name_are_found(tmp_path):
    """hostile X1: checkpoint.stale_files finds the (shortened) temporary names of a long checkpoint name."""
    ckpt = tmp_path / ("h" * 240 + ".ckpt.safetensors")
    stale = tmp_path / (temp_prefix(ckpt.name, ".safetensors") + "abcdefgh.partial.safetensors")
    stale.write_bytes(b"")
    assert checkpoint.stale_files(ckpt) == [stale]


# ---------------------------------------------------------------------------------------------------------- X12 / X13


def _frames(path, n=2, **kw):
    frames = [Image.fromarray(np.full((16, 16, 3), (0, 177 + 20 * i, 64), np.uint8)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], **kw)
    return path


@pytest.mark.parametrize("name,kw", [("a.gif", {}), ("a.png", {}), ("a.webp", {"lossless": True}), ("a.tiff", {})])
def test_hostile_x12_multi_frame_files_report_their_frames(tmp_path, name, kw):
    """hostile X12: animated GIF / APNG / WebP and multi-page TIFF: frame 0 is read, ``frames`` says how many."""
    img = load_image(_frames(tmp_path / name, **kw))
    assert img.frames == 2 and img.rgb.shape == (3, 16, 16)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "still.png")
    assert load_image(tmp_path / "still.png").frames == 1


def test_hostile_x13_non_regular_paths_say_what_they_are(tmp_path):
    """hostile X13: a folder, a FIFO and a device are named as such, not "no such file"."""
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    for path, says in ((tmp_path, "is a folder"), (tmp_path / "fifo.png", r"named pipe \(FIFO\)"),
                       (tmp_path / "zero.png", "is a device"), (tmp_path / "nope.png", "no such file")):
        with pytest.raises(ValueError, match=says):
            load_image(path)


# ---------------------------------------------------------------------------------------------------------- data sets


def _sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(1, 32, 32)
    a[:, 8:24, 8:24] = 1
    fg = torch.rand(3, 32, 32, generator=g)
    img = a * fg + (1 - a) * torch.tensor([0.0, 177 / 255, 64 / 255]).view(3, 1, 1)
    return img, fg, a


def _dataset(root, n=3):
    with MattingDatasetWriter(root, gate_enabled=False) as w:
        for i in range(n):
            w.write(f"s{i}", *_sample(i), "chroma_green")
    return root


def test_hostile_x9_a_lone_surrogate_is_a_value_error_naming_the_text(tmp_path):
    """hostile X9: a caption / meta string with a lone surrogate -> ValueError naming it (no UnicodeEncodeError)."""
    with pytest.raises(ValueError, match=r"caption: holds '\\udcff' at position 1, a lone surrogate"):
        prepare_sample("s", *_sample(), "chroma_green", caption="a\udcffb")
    with pytest.raises(ValueError, match="^prompt: "):
        prepare_sample("s", *_sample(), "chroma_green", meta={"prompt": "\ud800"})
    assert check_text("émoji 😀", "prompt") == "émoji 😀"


@pytest.mark.parametrize("entry", ["metadata.jsonl", "rejected.jsonl", "stats.json"])
def test_hostile_x10_a_folder_in_place_of_a_data_set_file_is_refused_up_front(tmp_path, entry):
    """hostile X10: a folder named metadata.jsonl (or rejected.jsonl, stats.json): refused on open, naming it,
    before any sub-folder is created."""
    (tmp_path / "ds" / entry).mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{entry}: is not a regular file"):
        MattingDatasetWriter(tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [entry]


def test_hostile_x10_a_file_in_place_of_a_sample_folder_is_refused(tmp_path):
    """hostile X10: a file named fg in the data-set folder: refused naming it."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "fg").write_text("x")
    with pytest.raises(ValueError, match=r"fg: is not a folder"):
        MattingDatasetWriter(tmp_path / "ds")


def test_hostile_x15_a_duplicated_row_is_an_error_naming_file_and_lines(tmp_path):
    """hostile X15: a copied metadata row -> ValueError naming the file, both lines and the sample; nothing changed."""
    root = _dataset(tmp_path / "ds")
    meta = root / "metadata.jsonl"
    lines = meta.read_text().splitlines(keepends=True)
    meta.write_text("".join(lines) + lines[1])
    before = meta.read_bytes()
    with pytest.raises(ValueError, match=r"metadata.jsonl: line 4 repeats sample 's1' \(also on line 2"):
        MattingDatasetWriter(root)
    assert meta.read_bytes() == before


def test_hostile_x15_a_row_whose_files_were_deleted_is_an_error(tmp_path):
    """hostile X15: deleted fg/s2.png and image/s2.png -> ValueError naming the line, the sample and the files."""
    root = _dataset(tmp_path / "ds")
    (root / "fg" / "s2.png").unlink()
    (root / "image" / "s2.png").unlink()
    with pytest.raises(ValueError, match=r"line 3 \(sample 's2'\) names 2 missing file\(s\): fg/s2.png, image/s2.png; "
                                         r"restore them, or delete that row"):
        MattingDatasetWriter(root)
    # the documented repair: delete the row (and the sample's other files); the set opens again
    meta = root / "metadata.jsonl"
    meta.write_text("".join(ln for ln in meta.read_text().splitlines(keepends=True) if '"s2"' not in ln))
    with MattingDatasetWriter(root) as w:
        assert w.names == {"s0", "s1"}


def test_hostile_x15_the_torn_last_line_is_still_repaired(tmp_path):
    """hostile X15: the new checks keep the torn-last-line repair (a killed append)."""
    root = _dataset(tmp_path / "ds")
    with open(root / "metadata.jsonl", "ab") as f:
        f.write(b'{"name": "s9", "fi')
    with MattingDatasetWriter(root) as w:
        assert w.names == {"s0", "s1", "s2"}
    assert (root / "metadata.jsonl").read_bytes().endswith(b"\n")


# ---------------------------------------------------------------------------------------------------------- X6


def test_hostile_x6_the_plan_is_bounded():
    """hostile X6: a plan over MAX_PLAN samples is refused at once (it hung building 3 x 10^20 samples)."""
    with pytest.raises(ValueError, match=f"limit: expected a whole number of samples in 0..{MAX_PLAN}"):
        Plan(["a"]).pending(3 * 10**20, set())
    assert [s.name for s in Plan(["a"]).pending(3, {"gen_000001"})] == ["gen_000000", "gen_000002"]


# ---------------------------------------------------------------------------------------------------------- X7 / X17 / X8


def test_hostile_x7_workers_have_an_upper_bound():
    """hostile X7: --workers 100000 -> ConfigError naming workers and its range (4 per CPU core, at most 256)."""
    assert 1 <= max_workers() <= 256
    with pytest.raises(ConfigError, match=rf"expected at most {max_workers()} sample processes .*, got 100000") as err:
        TrainConfig(out="h.safetensors", workers=100000)
    assert err.value.field == "workers"
    TrainConfig(out="h.safetensors", workers=max_workers())


def test_hostile_x17_all_zero_loss_weights_are_refused():
    """hostile X17: every loss weight 0 -> ValueError (nothing would be learnt); one positive weight is enough."""
    zero = dict.fromkeys(("l1", "l2", "lap", "grad", "comp", "fg"), 0)
    with pytest.raises(ValueError, match="every term is 0"):
        check_loss_weights(zero)
    assert check_loss_weights({**zero, "l1": 1})["l1"] == 1.0


def test_hostile_x8_resuming_with_other_settings_is_refused(trained_head, tiny_backend, tiny_pairs, head_config,
                                                          tmp_path):
    """hostile X8: resume with another crop / lr / loss weights -> refused, listing each difference and --no-resume;
    the same settings with more steps still resume."""
    dst = tmp_path / "run"
    dst.mkdir()
    shutil.copy(trained_head.path, dst / "head.safetensors")
    shutil.copy(trained_head.ckpt, dst / "head.ckpt.safetensors")
    out = dst / "head.safetensors"
    base = head_config(out, 4)
    other = dataclasses.replace(base, crop=base.crop + 8, lr=base.lr * 2, loss_weights={"l2": 1.0})
    with pytest.raises(ValueError, match="was trained with other settings") as err:
        train_head(tiny_backend, tiny_pairs, other, **QUIET)
    msg = str(err.value)
    assert f"--crop {base.crop} (now {base.crop + 8})" in msg and f"--lr {base.lr} (now {base.lr * 2})" in msg
    assert "--loss-weights" in msg and "l2=4 " not in msg and "--no-resume" in msg and "\n" not in msg
    logs = []
    train_head(tiny_backend, tiny_pairs, base, progress=False, log_fn=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs), logs


# ---------------------------------------------------------------------------------------------------------- X19


def test_hostile_x19_a_key_colour_of_the_other_import_is_accepted():
    """hostile X19: a KeyColour of another import of the pack (same name and fields, other class) is converted."""
    Other = type("KeyColour", (), {})
    foreign = Other()
    foreign.rgb, foreign.source, foreign.preset = (0.0, 0.69, 0.25), "preset", "chroma_green"
    key = as_key_colour(foreign)
    assert isinstance(key, KeyColour) and key.rgb == (0.0, 0.69, 0.25) and key.preset == "chroma_green"
    assert expand_key_colours([foreign], 2) == [key, key]
    assert as_key_colour(types.SimpleNamespace(rgb=(0, 1, 0), source="rgb", preset=None)) is None  # not by name


def test_hostile_x19_wording_for_a_batch_of_one():
    """hostile X19: "expected 1 key colour for a batch of 1", not "1 or 1 key colours"."""
    key = parse_key_colour("chroma_green")
    with pytest.raises(ValueError, match=r"^key: expected 1 key colour for a batch of 1, got 2$"):
        expand_key_colours([key, key], 1, "key")
    with pytest.raises(ValueError, match=r"expected 1 or 3 key colours for a batch of 3, got 2"):
        expand_key_colours([key, key], 3, "key")
