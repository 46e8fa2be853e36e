"""Data-set writer: layout, metadata rows, trimap, the quality gate, atomic per-sample commit under SIGKILL, the
one-writer-per-folder lock, and metadata.jsonl recovery."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from diffumatting.common.images import load_image
from diffumatting.dataset import (FOLDERS, DatasetLockedError, MattingDatasetWriter, QualityThresholds, gate,
                                  make_trimap, open_writer, quality_scores)
from diffumatting.dataset import writer as wmod

REPO = Path(__file__).resolve().parents[2]
GREEN = torch.tensor([0.0, 1.0, 0.0])


def _sample(h=32, w=32, box=(8, 24, 8, 24), colour=(0.8, 0.3, 0.2), soft=True):
    """A red-ish square object with a soft edge on a green canvas: (image, fg, alpha)."""
    alpha = torch.zeros(1, h, w)
    y0, y1, x0, x1 = box
    alpha[:, y0:y1, x0:x1] = 1.0
    if soft:
        alpha[:, y0, x0:x1] = 0.5
    fg = torch.tensor(colour).reshape(3, 1, 1).expand(3, h, w).clone()
    image = alpha * fg + (1 - alpha) * GREEN.reshape(3, 1, 1)
    return image, fg, alpha


def test_trimap_values():
    a = torch.zeros(1, 1, 20, 20)
    a[:, :, 5:15, 5:15] = 1.0
    tri = make_trimap(a, radius=2)
    assert set(tri.unique().tolist()) == {0.0, 0.5, 1.0}
    assert tri[0, 0, 10, 10] == 1.0 and tri[0, 0, 0, 0] == 0.0
    # the hard edge at column 5 gets an unknown band of 2 px each side
    assert tri[0, 0, 10, 3] == 0.5 and tri[0, 0, 10, 6] == 0.5 and tri[0, 0, 10, 2] == 0.0 and tri[0, 0, 10, 7] == 1.0
    # soft alpha is always unknown even with radius 0
    a[:, :, 10, 10] = 0.5
    assert make_trimap(a, radius=0)[0, 0, 10, 10] == 0.5
    with pytest.raises(ValueError, match="alpha"):
        make_trimap(torch.zeros(1, 20, 20))


def test_quality_gate_accepts_clean_sample():
    _, fg, a = _sample()
    scores = quality_scores(fg[None], a[None], GREEN)[0]
    assert scores["key_residue"] == 0.0 and scores["border_alpha"] == 0.0
    assert scores["coverage"] == pytest.approx((15 * 16 + 0.5 * 16) / 1024)
    assert gate(scores) == []


def test_quality_gate_rejects_green_residue():
    _, fg, a = _sample()
    fg[:, 8:14, 8:24] = GREEN.reshape(3, 1, 1)  # a third of the object still has screen colour
    scores = quality_scores(fg[None], a[None], GREEN)[0]
    assert scores["key_residue"] == pytest.approx((0.5 * 16 + 5 * 16) / (0.5 * 16 + 15 * 16))
    assert gate(scores) == ["key_residue"]
    # the same colour is fine against a blue key (a green object keyed on blue)
    assert gate(quality_scores(fg[None], a[None], torch.tensor([0.0, 0.0, 1.0]))[0]) == []


def test_key_residue_is_the_key_colour_difference():
    """Residue is measured with common.keycolour.key_difference (G - max(R, B) for green), not an RGB distance."""
    _, fg, a = _sample()
    fg[:, 8:24, 8:24] = torch.tensor([0.3, 1.0, 0.3]).reshape(3, 1, 1)  # 0.42 from the key in RGB, still very green
    assert quality_scores(fg[None], a[None], GREEN)[0]["key_residue"] == pytest.approx(1.0)
    fg[:, 8:24, 8:24] = torch.tensor([0.0, 0.45, 0.0]).reshape(3, 1, 1)  # dark green: difference 0.45 < 0.5 of 1.0
    assert quality_scores(fg[None], a[None], GREEN)[0]["key_residue"] == 0.0
    assert quality_scores(fg[None], a[None], GREEN, QualityThresholds(key_similarity=0.4))[0]["key_residue"] == 1.0
    # a key too close to grey to key against: no residue to speak of (the keyed result is all opaque anyway)
    grey = torch.tensor([0.5, 0.52, 0.5])
    assert quality_scores(fg[None], a[None], grey)[0]["key_residue"] == 0.0


def test_quality_gate_rejects_border_empty_full():
    _, fg, a = _sample(box=(0, 20, 8, 24), soft=False)  # touches the top edge
    assert gate(quality_scores(fg[None], a[None], GREEN)[0]) == ["border"]
    _, fg, a = _sample(box=(15, 17, 15, 17))  # 4 px of 1024
    assert gate(quality_scores(fg[None], a[None], GREEN)[0]) == ["empty"]
    _, fg, a = _sample(box=(2, 30, 2, 30), soft=False)
    assert "full" in gate(quality_scores(fg[None], a[None], GREEN)[0], QualityThresholds(max_coverage=0.5))


def test_writer_layout_and_metadata(tmp_path):
    w = MattingDatasetWriter(tmp_path / "ds", alpha_bits=16, trimap_radius=2)
    image, fg, a = _sample()
    res = w.write("s_000000", image, fg, a, GREEN, caption="a red box", meta={"prompt": "a red box", "seed": 7, "model": "m.safetensors"})
    assert res.accepted and res.reasons == []
    root = tmp_path / "ds"
    for folder in FOLDERS:
        files = list((root / folder).iterdir())
        assert [f.stem for f in files] == ["s_000000"], folder
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["prompt"] == "a red box" and row["seed"] == 7 and row["model"] == "m.safetensors"
    assert row["key_colour"] == "#00ff00" and set(row["scores"]) == {"key_residue", "border_alpha", "coverage"}
    assert row["files"]["alpha"] == "alpha/s_000000.png"
    alpha_file = load_image(root / "alpha/s_000000.png")
    assert alpha_file.bit_depth == 16
    assert torch.allclose(alpha_file.rgb[:1], a, atol=1 / 65535)
    tri = load_image(root / "trimap/s_000000.png").rgb[0]
    assert set(np.unique((tri * 255).round().numpy()).tolist()) == {0.0, 128.0, 255.0}
    assert (root / "caption/s_000000.txt").read_text() == "a red box\n"
    assert not (root / ".staging").exists() or not any((root / ".staging").iterdir())
    assert not any((root / ".pending").iterdir())
    # duplicates are refused; a reopened writer knows the sample
    with pytest.raises(ValueError, match="already exists"):
        w.write("s_000000", image, fg, a, GREEN)
    w.close()
    w2 = MattingDatasetWriter(root)
    assert "s_000000" in w2 and w2.next_index("s") == 1
    w2.close()


def test_writer_counts_rejections(tmp_path):
    w = MattingDatasetWriter(tmp_path)
    image, fg, a = _sample(box=(0, 20, 8, 24))
    res = w.write("s_000000", image, fg, a, GREEN, meta={"seed": 1})
    assert not res.accepted and res.reasons == ["border"]
    assert not any((tmp_path / "image").iterdir())
    image, fg, a = _sample()
    assert w.write("s_000001", image, fg, a, GREEN).accepted
    stats = w.write_stats()
    assert stats["counts"] == {"accepted": 1, "rejected": 1, "rejected_border": 1}
    w.close()
    w2 = MattingDatasetWriter(tmp_path)
    assert "s_000000" in w2 and w2.counts["rejected"] == 1 and w2.next_index("s") == 2


def test_writer_rejects_bad_input(tmp_path):
    w = MattingDatasetWriter(tmp_path)
    image, fg, a = _sample()
    with pytest.raises(ValueError, match="name"):
        w.write("../evil", image, fg, a, GREEN)
    with pytest.raises(ValueError, match=r"alpha: expected a \[1,H,W\]"):
        w.write("x", image, fg, a[None], GREEN)
    bad = fg.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        w.write("x", image, bad, a, GREEN)
    with pytest.raises(ValueError, match="alpha_bits"):
        MattingDatasetWriter(tmp_path, alpha_bits=12)
    with pytest.raises(ValueError, match="trimap_radius"):
        w.write("x", image, fg, a, GREEN, trimap_radius=-1)
    with pytest.raises(ValueError, match=r"trimap_radius: .*0\.\.256.*1000000"):
        w.write("x", image, fg, a, GREEN, trimap_radius=1000000)
    with pytest.raises(ValueError, match="min_coverage"):
        w.write("x", image, fg, a, GREEN, thresholds=QualityThresholds(min_coverage=0.9, max_coverage=0.1))
    assert not w.names  # nothing was written by the refused calls
    w.close()
    for kwargs in ({"trimap_radius": -1}, {"trimap_radius": 257},
                   {"thresholds": QualityThresholds(min_coverage=0.9, max_coverage=0.1)},
                   {"thresholds": QualityThresholds(max_key_residue=float("nan"))}):
        with pytest.raises(ValueError):
            MattingDatasetWriter(tmp_path / "other", **kwargs)
    with pytest.raises(ValueError, match="radius"):
        make_trimap(torch.zeros(1, 1, 8, 8), radius=257)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from diffumatting.dataset import writer as wmod
    kill_at = int(sys.argv[2])
    calls = {{"n": 0}}
    real_replace, real_append = os.replace, wmod._append_row
    def counting_replace(a, b):
        calls["n"] += 1
        if calls["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(a, b)
    def counting_append(path, row):
        calls["n"] += 1
        if calls["n"] == kill_at:
            # die half-way through the commit line: write a torn row first
            with open(path, "ab") as f:
                f.write(b'{{"name": "torn')
            os.kill(os.getpid(), signal.SIGKILL)
        return real_append(path, row)
    os.replace = counting_replace
    wmod._append_row = counting_append
    w = wmod.MattingDatasetWriter(sys.argv[1])
    alpha = torch.zeros(1, 32, 32); alpha[:, 8:24, 8:24] = 1
    fg = torch.full((3, 32, 32), 0.5)
    image = alpha * fg + (1 - alpha) * torch.tensor([0., 1., 0.]).reshape(3, 1, 1)
    for i in range(3):
        w.write(f"s_{{i:06d}}", image, fg, alpha, torch.tensor([0., 1., 0.]))
    """
)


def _check_consistent(root: Path) -> set[str]:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()] \
        if (root / "metadata.jsonl").exists() else []
    names = {r["name"] for r in rows}
    for folder in FOLDERS:
        stems = {p.stem for p in (root / folder).iterdir()}
        assert stems == names, (folder, stems, names)
        for p in (root / folder).iterdir():
            if p.suffix == ".png":
                assert load_image(p).rgb.shape[-1] == 32  # every file readable, none partial
    return names


@pytest.mark.parametrize("kill_at", [3, 6, 8, 11, 12])
def test_killed_write_leaves_no_partial_sample(tmp_path, kill_at):
    """SIGKILL at every stage of a sample's commit (save_png renames, the moves, the metadata row)."""
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(repo=str(REPO)))
    root = tmp_path / "ds"
    proc = subprocess.run([sys.executable, str(script), str(root), str(kill_at)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    w = MattingDatasetWriter(root)  # recovery on open (the killed holder's lock went with it)
    names = _check_consistent(root)
    assert names == set(w.committed)
    assert not (root / ".staging").exists() or not any((root / ".staging").iterdir())
    assert not (root / ".pending").exists() or not any((root / ".pending").iterdir())
    # the run can go on after the crash
    image, fg, a = _sample()
    nxt = f"s_{w.next_index('s'):06d}"
    assert w.write(nxt, image, fg, a, GREEN).accepted
    assert _check_consistent(root) == names | {nxt}


# -- one writer per folder ----------------------------------------------------------------------------------------

HOLD_SCRIPT = (
    "import sys\n"
    "from diffumatting.dataset import MattingDatasetWriter\n"
    "w = MattingDatasetWriter(sys.argv[1])\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_second_process_is_refused_and_a_killed_holder_frees_the_folder(tmp_path):
    root = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        (root / ".staging" / "m0097.abc").mkdir(parents=True)  # the holder's sample in progress
        with pytest.raises(DatasetLockedError) as info:
            MattingDatasetWriter(root)
        msg = str(info.value)
        assert str(root) in msg and f"pid {holder.pid}" in msg and "another writer" in msg
        with pytest.raises(DatasetLockedError):
            open_writer(root)
        # the refused writer did not "recover" the holder's staging area away
        assert (root / ".staging" / "m0097.abc").is_dir()
    finally:
        holder.kill()  # SIGKILL: no clean-up in the holder
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert (root / ".lock").exists()  # the file stays, the lock went with the process
    w = MattingDatasetWriter(root)
    image, fg, a = _sample()
    assert w.write("s_000000", image, fg, a, GREEN).accepted
    w.close()


def test_one_writer_per_folder_within_a_process(tmp_path):
    root = tmp_path / "ds"
    w = MattingDatasetWriter(root)
    with pytest.raises(DatasetLockedError, match="open_writer"):
        MattingDatasetWriter(root)
    # open_writer shares the open writer (also through another spelling / a symlink of the folder)
    (tmp_path / "link").symlink_to(root)
    shared = open_writer(tmp_path / "link")
    assert shared is w and open_writer(str(root) + "/.") is w
    image, fg, a = _sample()
    shared.write("a", image, fg, a, GREEN)
    assert "a" in w  # one in-memory state: the other user sees the sample without re-reading the file
    shared.close()
    shared.close()
    assert not w.closed  # w still holds it
    w.close()
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.write("b", image, fg, a, GREEN)
    with open_writer(root) as w2:  # free again
        assert w2 is not w and "a" in w2
    assert w2.closed


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        MattingDatasetWriter(target)
    real_open = os.open

    def read_only_open(path, flags, *args):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(wmod.os, "open", read_only_open)  # os.open as seen by the lock (same os module)
    with pytest.raises(ValueError, match="cannot write a data set here: Read-only file system"):
        MattingDatasetWriter(tmp_path / "ro")


# -- metadata.jsonl recovery ----------------------------------------------------------------------------------------

def _filled(root, n=4):
    w = MattingDatasetWriter(root)
    image, fg, a = _sample()
    for i in range(n):
        w.write(f"s_{i:06d}", image, fg, a, GREEN)
    w.close()
    return root / "metadata.jsonl"


def test_bad_middle_row_is_an_error_and_changes_nothing(tmp_path):
    meta = _filled(tmp_path / "ds")
    lines = meta.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]  # line 3 cut short (a hand edit, or an old short write)
    meta.write_bytes(b"\n".join(lines))
    (tmp_path / "ds" / ".pending").mkdir(exist_ok=True)
    before = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(ValueError, match=r"metadata\.jsonl: line 3 "):
        MattingDatasetWriter(tmp_path / "ds")
    after = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before
    # the failed open released the folder: with the bad line removed by hand it opens again
    meta.write_bytes(b"\n".join(lines[:2] + lines[3:]))
    with MattingDatasetWriter(tmp_path / "ds") as w:
        assert len(w.committed) == 3


def test_torn_last_row_is_repaired(tmp_path):
    meta = _filled(tmp_path / "ds")
    good = meta.read_bytes()
    meta.write_bytes(good + b'{"name": "s_00000')
    with MattingDatasetWriter(tmp_path / "ds") as w:
        assert sorted(w.committed) == [f"s_{i:06d}" for i in range(4)]
    assert meta.read_bytes() == good


def test_append_row_survives_short_writes_and_cuts_back_a_failed_one(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    wmod._append_row(str(path), {"name": "first"})
    real_write = os.write
    monkeypatch.setattr(wmod.os, "write", lambda fd, data: real_write(fd, bytes(data[:5])))  # 5 bytes per call
    wmod._append_row(str(path), {"name": "second", "caption": "a long caption " * 20})
    calls = {"n": 0}

    def failing_write(fd, data):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data[:5]))

    monkeypatch.setattr(wmod.os, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        wmod._append_row(str(path), {"name": "third"})
    monkeypatch.setattr(wmod.os, "write", real_write)
    wmod._append_row(str(path), {"name": "fourth"})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["first", "second", "fourth"]
