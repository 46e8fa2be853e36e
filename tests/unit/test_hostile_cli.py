"""Regression tests for the CLI cases of the hostile-input pass (issue #19 part 2, ``/tmp/hostile/findings.md``).

One test per case id, named ``hostile <ID>`` in its docstring. The commands run in-process through ``cli.main``
(its exit status and stderr are what ``python -m diffumatting`` prints; a traceback would be an exception here), as in
``test_report_cli.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffumatting.cli import main


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def green_picture(w: int = 48, h: int = 48) -> np.ndarray:
    """uint8 [H,W,3]: a soft-edged disc on chroma green."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.clip((0.3 * min(w, h) - np.hypot(xs - 0.5 * w, ys - 0.5 * h)) / 2 + 0.5, 0, 1)[..., None]
    img = a * np.array([0.8, 0.3, 0.5], np.float32) + (1 - a) * np.array([0.0, 177 / 255, 64 / 255], np.float32)
    return (img * 255).round().astype(np.uint8)


def save(path: Path, arr: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(green_picture() if arr is None else arr).save(path)
    return path


def test_hostile_x1_key_writes_a_long_name_and_reports_a_too_long_one(tmp_path, capsys):
    """hostile X1: a 245-byte output name is written; a name that cannot fit is reported for that input and the
    run carries on with the rest (exit 2, no "-o/--out" error, no traceback)."""
    src = tmp_path / "in"
    save(src / ("b" * 236 + ".png"))
    save(src / "z.png")
    rc, out, err = cli(capsys, "key", src, "-o", tmp_path / "out")
    assert rc == 0, err
    assert (tmp_path / "out" / ("b" * 236 + "_rgba.png")).is_file() and (tmp_path / "out" / "z_rgba.png").is_file()
    # 250 bytes of stem: the input exists (255 bytes), its output "<stem>_rgba.png" (259) cannot
    save(src / ("c" * 250 + ".png"))
    rc, out, err = cli(capsys, "key", src, "-o", tmp_path / "out2")
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and "-o/--out" not in err, err
    assert any("c" * 40 in ln and "is 259 bytes long" in ln for ln in lines), err
    assert lines[-1] == "error: 1 of 3 input(s) could not be keyed (see above)"
    assert (tmp_path / "out2" / "z_rgba.png").is_file()
    assert not [p for p in (tmp_path / "out2").iterdir() if "partial" in p.name]


def test_hostile_x11_key_into_its_own_input_folder_skips_its_outputs(tmp_path, capsys):
    """hostile X11: `key io -o io` twice: the second run skips a_rgba.png (with a note), writes no a_rgba_rgba.png."""
    io = tmp_path / "io"
    save(io / "a.png")
    assert cli(capsys, "key", io, "-o", io)[0] == 0
    rc, out, err = cli(capsys, "key", io, "-o", io)
    assert rc == 0, err
    assert "note: skipped 1 file(s) named *_rgba.png / *_alpha.png in the output folder" in out
    assert sorted(p.name for p in io.iterdir()) == ["a.png", "a_rgba.png"]
    # named explicitly, an output is keyed anyway
    assert cli(capsys, "key", io / "a_rgba.png", "-o", io)[0] == 0 and (io / "a_rgba_rgba.png").is_file()


def test_hostile_x12_key_and_dataset_say_only_the_first_frame_was_used(tmp_path, capsys):
    """hostile X12: a 2-frame GIF is keyed from frame 0 with a warning saying so (key and dataset)."""
    frames = [Image.fromarray(green_picture()), Image.fromarray(green_picture()[:, ::-1] // 2)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    rc, out, err = cli(capsys, "key", gif, "-o", tmp_path / "out")
    assert rc == 0 and "warning: it holds 2 frames (animated or multi-page); only the first was used" in out, out
    rc, out, err = cli(capsys, "dataset", gif, "--out", tmp_path / "ds", "--no-gate")
    assert rc == 0 and f"warning: {gif}: it holds 2 frames" in err, err


def test_hostile_x13_key_and_demo_say_what_a_non_regular_input_is(tmp_path, capsys):
    """hostile X13: a FIFO / a link to /dev/zero in a folder, and a folder given to demo --image, are named as what
    they are, not "no such file"."""
    fold = tmp_path / "fold"
    save(fold / "a.png")
    os.mkfifo(fold / "fifo.png")
    os.symlink("/dev/zero", fold / "zero.png")
    rc, out, err = cli(capsys, "key", fold, "-o", tmp_path / "out")
    assert rc == 2 and "Traceback" not in err
    assert "fifo.png: is a named pipe (FIFO), not a regular file" in err and "zero.png: is a device" in err, err
    assert "no such file" not in err and (tmp_path / "out" / "a_rgba.png").is_file()
    rc, out, err = cli(capsys, "demo", "--image", fold, "-o", tmp_path / "demo")
    assert rc == 2 and err.strip() == f"error: {fold}: is a folder; expected an image file", err


def test_hostile_x14_dataset_prints_the_grey_key_warning_as_one_line(tmp_path, capsys):
    """hostile X14: `dataset --key-colour 0,0,0`: a `warning: <file>: ...` line, no raw Python warning."""
    img = save(tmp_path / "a.png")
    rc, out, err = cli(capsys, "dataset", img, "--key-colour", "0,0,0", "--out", tmp_path / "ds")
    assert rc == 0, err
    assert f"warning: {img}: #000000 is too close to grey" in err
    assert "NoKeyColourWarning" not in err and "core.py" not in err and "resolve_key_colours" not in err, err


def test_hostile_x10_dataset_refuses_a_folder_named_metadata_jsonl_up_front(tmp_path, capsys):
    """hostile X10: `--out` holding a folder metadata.jsonl: one line naming it, before keying or creating folders."""
    (tmp_path / "ds" / "metadata.jsonl").mkdir(parents=True)
    rc, out, err = cli(capsys, "dataset", save(tmp_path / "a.png"), "--out", tmp_path / "ds")
    assert rc == 2 and err.strip().startswith("error: --out: ") and "metadata.jsonl: is not a regular file" in err
    assert out == "" and sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["metadata.jsonl"]


def test_hostile_x15_dataset_reports_a_duplicated_row(tmp_path, capsys):
    """hostile X15: a hand-copied metadata row: `dataset` stops with a line naming the file, lines and sample."""
    imgs = [save(tmp_path / f"{n}.png") for n in "ab"]
    assert cli(capsys, "dataset", *imgs, "--out", tmp_path / "ds", "--no-gate")[0] == 0
    meta = tmp_path / "ds" / "metadata.jsonl"
    meta.write_text(meta.read_text() + meta.read_text().splitlines(keepends=True)[0])
    rc, out, err = cli(capsys, "dataset", save(tmp_path / "c.png"), "--out", tmp_path / "ds")
    assert rc == 2 and "metadata.jsonl: line 3 repeats sample" in err and "Traceback" not in err, err


def _generate(tmp_path, *args):
    return ("generate", "--comfyui", tmp_path / "no-comfyui", "--checkpoint", "none.safetensors",
            "--out", tmp_path / "g", *args)


@pytest.mark.parametrize("source,says", [("/dev/zero", "is a device, not a regular file"),
                                         ("FOLDER", "is a folder"), ("FIFO", "is a named pipe (FIFO)"),
                                         ("BIG", "MiB; at most 16 MiB is read")])
def test_hostile_x5_generate_refuses_unbounded_prompt_files(tmp_path, capsys, source, says):
    """hostile X5: `--prompts /dev/zero` (read for ever), a FIFO (blocks), a folder or a 17 MiB file: one line."""
    path = {"/dev/zero": "/dev/zero", "FOLDER": str(tmp_path), "FIFO": str(tmp_path / "fifo"),
            "BIG": str(tmp_path / "big.txt")}[source]
    if source == "FIFO":
        os.mkfifo(path)
    if source == "BIG":
        with open(path, "wb") as f:
            f.truncate(17 * 2**20)
    rc, out, err = cli(capsys, *_generate(tmp_path, "--prompts", path, "--count", "1"))
    assert rc == 2 and err.startswith(f"error: --prompts: {path}") and says in err and "\n" not in err.strip(), err


@pytest.mark.parametrize("args,says", [(["--count", "99999999999999999999"], "--count: expected 1..1000000"),
                                       (["--count", "1", "--max-attempts", "10000000"],
                                        "--max-attempts: expected 1..3000000")])
def test_hostile_x6_generate_bounds_count_and_max_attempts(tmp_path, capsys, args, says):
    """hostile X6: a --count of 10^20 (it hung building the plan) or a huge --max-attempts: one line at once."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    rc, out, err = cli(capsys, *_generate(tmp_path, "--prompts", prompts, *args))
    assert rc == 2 and f"error: {says}" in err and not (tmp_path / "g").exists(), err


def _train_head(tmp_path, *args):
    return ("train-head", "--image-only", "--synthetic-only", "--crop", "64", "--batch", "2", "--buffer", "8",
            "--steps", "1", "--threads", "1", "--no-progress", "--out", tmp_path / "h.safetensors", *args)


def test_hostile_x7_train_head_bounds_workers(tmp_path, capsys):
    """hostile X7: `--workers 100000` (it forked hundreds of processes): one line naming --workers and the range."""
    rc, out, err = cli(capsys, *_train_head(tmp_path, "--workers", "100000"))
    assert rc == 2 and err.startswith("error: --workers: expected at most ") and "got 100000" in err, err
    assert not list(tmp_path.iterdir())


def test_hostile_x17_train_head_refuses_all_zero_loss_weights(tmp_path, capsys):
    """hostile X17: every --loss-weights term 0: refused (at least one positive weight)."""
    rc, out, err = cli(capsys, *_train_head(tmp_path, "--loss-weights", "l1=0,l2=0,lap=0,grad=0,comp=0,fg=0"))
    assert rc == 2 and "error: --loss-weights: " in err and "at least one positive weight" in err, err
    assert not list(tmp_path.iterdir())
