"""Regression tests for the CLI cases of the bad-input report (issue #19, ``../shared/docs/bad-input-report.md``).

One test (or one parametrised case) per report id, named ``report <ID>``; ``qa/bad_input_report.py`` reruns the
report's cases as written. The commands run in-process through ``cli.main`` (its exit status and stderr are what
``python -m diffumatting`` prints; a traceback would be an exception here); ``test_python_m_exit_status`` checks the
real ``python -m`` path once. Read-only and full disks are emulated at the system call the code makes
(``tempfile.mkstemp`` -> EROFS, ``os.fsync`` -> ENOSPC, ``shutil.disk_usage``): root writes through a chmod'ed folder,
and unit tests do not mount file systems.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffumatting.cli import main

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc: int, err: str, *needles: str) -> None:
    """exit status 2 and one ``error:`` line naming ``needles`` (the last stderr line: per-file lines come first)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and lines and all(ln.startswith("error:") for ln in lines), err
    assert "Traceback" not in err and any(all(n in ln for n in needles) for ln in lines), err


def green_picture(w: int, h: int, seed: int = 0, cx: float = 0.5) -> np.ndarray:
    """uint8 [H,W,3]: a soft-edged striped disc on chroma green."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.clip((0.3 * min(w, h) - np.hypot(xs - cx * w, ys - 0.5 * h)) / 2 + 0.5, 0, 1)[..., None]
    fg = np.stack([0.8 + 0 * xs, 0.3 + 0.2 * np.sin(xs / 3 + seed), 0.5 + 0 * xs], -1)
    img = a * fg + (1 - a) * np.array([0.0, 177 / 255, 64 / 255], np.float32)
    return (img * 255).round().astype(np.uint8)


def save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **kw)
    return path


@pytest.fixture()
def green(tmp_path) -> Path:
    return save(tmp_path / "in" / "g.png", green_picture(64, 64))


def read_only(*a, **kw):
    raise OSError(errno.EROFS, "Read-only file system")


# ------------------------------------------------------------------------------------------------------------------
# key / demo


def test_auto_key_without_a_screen_is_opaque_with_a_warning(tmp_path, capsys):
    """report K1: a red disc on flat grey under the auto key: a warning and a fully opaque result, not an inverted
    matte."""
    import cv2

    img = np.full((96, 96, 3), 128, np.uint8)
    ys, xs = np.mgrid[0:96, 0:96]
    img[np.hypot(xs - 48, ys - 48) < 24] = (230, 26, 26)
    rc, out, _ = cli(capsys, "key", save(tmp_path / "rog.png", img), "-o", tmp_path / "o")
    alpha = cv2.imread(str(tmp_path / "o" / "rog_rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3]
    assert rc == 0 and "warning" in out and "key colour" in out, out
    assert alpha.min() == 255  # the object (centre) and the background (corner) both opaque


def test_exif_orientation_is_applied(tmp_path, capsys):
    """report K2: a JPEG stored 40x64 with EXIF Orientation 6 is keyed upright, 64x40 (as viewers and LoadImage
    show it)."""
    import cv2

    exif = Image.Exif()
    exif[0x0112] = 6
    src = save(tmp_path / "exif6.jpg", green_picture(40, 64, cx=0.3), exif=exif, quality=95)
    rc, _, _ = cli(capsys, "key", src, "-o", tmp_path / "o")
    assert rc == 0 and cv2.imread(str(tmp_path / "o" / "exif6_rgba.png")).shape[:2] == (40, 64)


def test_same_stem_inputs_get_distinct_outputs(tmp_path, capsys):
    """report K3: coll/a.jpg and coll/a.png give two outputs (a_jpg_rgba.png, a_png_rgba.png) and a note."""
    save(tmp_path / "coll" / "a.jpg", green_picture(64, 64, 1), quality=95)
    save(tmp_path / "coll" / "a.png", green_picture(64, 64, 2))
    rc, out, _ = cli(capsys, "key", tmp_path / "coll", "-o", tmp_path / "o")
    assert rc == 0 and "note:" in out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_jpg_rgba.png", "a_png_rgba.png"]


@pytest.mark.parametrize("problem", [
    pytest.param("file", id="report K4 existing file"), pytest.param("proc", id="report K4 /proc/x"),
    pytest.param("read-only", id="report K4 read-only fs"), pytest.param("full", id="report K4 full disk")])
def test_key_unusable_out_is_one_line(tmp_path, capsys, monkeypatch, green, problem):
    """report K4 (the four -o cases): an existing file, /proc/x, a read-only file system, a disk that fills up at
    write time: exit 2, one line naming -o/--out, no partial file."""
    out = tmp_path / "o"
    if problem == "file":
        out.write_text("x")
    elif problem == "proc":
        out = Path("/proc/x")
        if not Path("/proc/self").exists():
            pytest.skip("no /proc here")
    elif problem == "read-only":
        monkeypatch.setattr("tempfile.mkstemp", read_only)
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)  # the probe passes; the image write fails, as on a full tmpfs
    rc, _, err = cli(capsys, "key", green, "-o", out)
    assert_one_line(rc, err, "-o/--out")
    if problem == "full":
        assert list(out.iterdir()) == []  # no partial file, no temp file


@pytest.mark.parametrize("problem", [pytest.param("file", id="report K5 file"),
                                     pytest.param("read-only", id="report K5 read-only"),
                                     pytest.param("full", id="report K5 full disk")])
def test_demo_unusable_out_is_one_line(tmp_path, capsys, monkeypatch, green, problem):
    """report K5 (the three demo -o cases): a file, a read-only and a full disk: exit 2, one line, no partial file."""
    out = tmp_path / "o"
    if problem == "file":
        out.write_text("x")
    elif problem == "read-only":
        monkeypatch.setattr("tempfile.mkstemp", read_only)
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
    rc, _, err = cli(capsys, "demo", "-o", out, "--image", green)
    assert_one_line(rc, err, "-o/--out")
    if problem == "full":
        assert list(out.iterdir()) == []


def test_demo_nan_tiff_is_one_line(tmp_path, capsys):
    """report K6: demo --image on a float32 TIFF holding a NaN: exit 2, one line naming the file (no traceback)."""
    import cv2

    img = np.full((32, 32, 3), 0.5, np.float32)
    img[3, 3, 1] = np.nan
    cv2.imwrite(str(tmp_path / "nan.tiff"), img)
    rc, _, err = cli(capsys, "demo", "--image", tmp_path / "nan.tiff", "-o", tmp_path / "o")
    assert_one_line(rc, err, "nan.tiff", "NaN")


def huge_png(path: Path, w: int, h: int) -> Path:
    """A PNG whose header says ``w`` x ``h`` with only its first rows of pixel data: a refusal from the header is
    all these tests may see (decoding it would fail differently, and a real 12000x12000 decode needs ~10 GB)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp, row = zlib.compressobj(6), b"\x00" + b"\x80" * (3 * w)
    data = b"".join(comp.compress(row) for _ in range(16)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_huge_image_is_refused_up_front(tmp_path, capsys, monkeypatch):
    """report K7: a 12000x12000 PNG with 10 GB free: refused from its header, one line with the size and the limit
    (the decoder is not reached)."""
    import cv2

    from diffumatting.greenpost import core

    monkeypatch.setattr(core, "available_memory", lambda device: 10 * 10**9)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded although the header says it is too big"))
    rc, _, err = cli(capsys, "key", huge_png(tmp_path / "big12k.png", 12000, 12000), "-o", tmp_path / "o")
    assert_one_line(rc, err, "12000x12000", "Mpx", "free memory")


def test_huge_image_limit_respects_ulimit_v(tmp_path, capsys, monkeypatch):
    """report K7 run as the report ran it, under `ulimit -v 14000000`: the limit is what the address space allows,
    not the (larger) free memory, so an image between the two is refused up front instead of failing inside the
    keying with an allocation error."""
    import resource

    from diffumatting.cli.commands.key import memory_limit
    from diffumatting.greenpost import core

    monkeypatch.setattr(core, "available_memory", lambda device: 100 * 10**9)  # plenty of RAM ...
    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (14_000_000 * 1024, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else real(which))  # ... but ulimit -v 14 GB
    pixels, why = memory_limit()
    assert pixels * 200 <= 14_000_000 * 1024 and "ulimit -v" in why
    rc, _, err = cli(capsys, "key", huge_png(tmp_path / "big10k.png", 10000, 10000), "-o", tmp_path / "o")
    assert_one_line(rc, err, "10000x10000", "ulimit -v")


def test_demo_without_a_key_colour_says_so_once(tmp_path, capsys):
    """report K8: demo on noise: the summary says no screen was found (no 'key colour #...'), no raw warnings."""
    noise = save(tmp_path / "noise.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    rc, out, err = cli(capsys, "demo", "--image", noise, "-o", tmp_path / "o")
    assert rc == 0 and "no green, blue or magenta screen found" in out and "key colour #" not in out, out
    assert "Warning" not in err, err


def test_la_png_gets_the_greyscale_note(tmp_path, capsys):
    """report minor note (LA PNG): an LA PNG is greyscale: the greyscale note, not 'no recognisable key colour'
    (OpenCV decodes LA as BGRA)."""
    la = np.zeros((48, 48, 2), np.uint8)
    la[..., 0], la[..., 1] = 90, 255
    rc, out, _ = cli(capsys, "key", save(tmp_path / "la.png", la, "LA"), "-o", tmp_path / "o")
    assert rc == 0 and "greyscale" in out and "no recognisable key colour" not in out, out


def test_float_tiff_above_one_is_clipped_with_a_note(tmp_path, capsys):
    """report minor note (float TIFF up to 3): keyed, with a note that values outside [0, 1] were clipped."""
    import cv2

    from diffumatting.common.images import load_image

    hot = np.full((32, 32, 3), 0.5, np.float32)
    hot[:4, :4] = 3.0
    cv2.imwrite(str(tmp_path / "hot.tiff"), hot)
    assert load_image(tmp_path / "hot.tiff").clipped
    rc, out, _ = cli(capsys, "key", tmp_path / "hot.tiff", "-o", tmp_path / "o")
    assert rc == 0 and "clipped" in out, out
    cv2.imwrite(str(tmp_path / "ok.tiff"), np.full((32, 32, 3), 0.5, np.float32))
    assert not load_image(tmp_path / "ok.tiff").clipped


# ------------------------------------------------------------------------------------------------------------------
# dataset


def test_dataset_read_only_out(tmp_path, capsys, monkeypatch, green):
    """report D1: dataset --out on a read-only file system: exit 2, one line naming --out."""
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    rc, _, err = cli(capsys, "dataset", green, "--out", tmp_path / "ds")
    assert_one_line(rc, err, "--out")


@pytest.mark.parametrize("opts, needle", [
    pytest.param(("--caption",), "UTF-8", id="report D2 caption not UTF-8"),
    pytest.param(("--trimap-radius", "-1"), "--trimap-radius", id="report D3 trimap radius -1"),
    pytest.param(("--trimap-radius", "1000000"), "--trimap-radius", id="report D4 trimap radius 1e6"),
    pytest.param(("--min-coverage", "0.9", "--max-coverage", "0.1"), "--min-coverage", id="report D5 min > max")])
def test_dataset_refuses_up_front(tmp_path, capsys, green, opts, needle):
    """report D2-D5: a non-UTF-8 caption, --trimap-radius -1 / 1000000, --min-coverage above --max-coverage:
    exit 2, one line, before keying anything or creating --out."""
    if opts == ("--caption",):
        green.with_suffix(".txt").write_bytes(b"\xff\xfebad")
        opts = ()
    out = tmp_path / "ds"
    rc, _, err = cli(capsys, "dataset", green, "--out", out, *opts)
    assert_one_line(rc, err, needle)
    assert not out.exists()


def rows(ds: Path) -> list[dict]:
    return [json.loads(ln) for name in ("metadata.jsonl", "rejected.jsonl") if (ds / name).is_file()
            for ln in (ds / name).read_text().splitlines() if ln.strip()]


def test_dataset_sanitised_names_do_not_collide_on_resume(tmp_path, capsys):
    """report D6: nm1/a_b.png, then nm2/'a b.png' and nm2/a_b.png into the same set: all three keyed, three
    distinct names and sources."""
    save(tmp_path / "nm1" / "a_b.png", green_picture(64, 64, 1))
    save(tmp_path / "nm2" / "a b.png", green_picture(64, 64, 2))
    save(tmp_path / "nm2" / "a_b.png", green_picture(64, 64, 3))
    ds = tmp_path / "S"
    assert cli(capsys, "dataset", tmp_path / "nm1", "--out", ds, "--no-gate")[0] == 0
    assert cli(capsys, "dataset", tmp_path / "nm2", "--out", ds, "--no-gate")[0] == 0
    got = rows(ds)
    assert len(got) == 3 and len({r["name"] for r in got}) == 3 and len({r["source"] for r in got}) == 3


def test_dataset_bad_middle_metadata_line_changes_nothing(tmp_path, capsys):
    """report D7: line 3 of a finished set's metadata.jsonl cut to 40 bytes, then a rerun: an error naming the file
    and line 3, exit 2; no row and no file removed."""
    for i in range(4):
        save(tmp_path / "in" / f"s{i}.png", green_picture(64, 64, i))
    ds = tmp_path / "ds"
    assert cli(capsys, "dataset", tmp_path / "in", "--out", ds, "--no-gate")[0] == 0
    meta = ds / "metadata.jsonl"
    lines = meta.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]
    meta.write_bytes(b"\n".join(lines))
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file() and p.name != ".lock"}
    rc, _, err = cli(capsys, "dataset", tmp_path / "in" / "s0.png", "--out", ds, "--no-gate")
    assert_one_line(rc, err, "metadata.jsonl", "line 3")
    assert all(p.is_file() and p.read_bytes() == data for p, data in before.items())


def test_dataset_opaque_input_alpha_is_ignored_with_a_note(tmp_path, capsys):
    """report D8: an RGBA PNG whose alpha is fully opaque: a note says so, and the picture is keyed."""
    import cv2

    rgb = green_picture(64, 64)
    src = save(tmp_path / "o.png", np.dstack([rgb, np.full((64, 64), 255, np.uint8)]), "RGBA")
    rc, _, err = cli(capsys, "dataset", src, "--out", tmp_path / "ds", "--no-gate")
    alpha = cv2.imread(str(next((tmp_path / "ds" / "alpha").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert rc == 0 and "fully opaque" in err and alpha.min() < 255


HOLDER = """
import sys, time
from diffumatting.dataset import open_writer
w = open_writer(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture()
def held_folder(tmp_path):
    """A data-set folder whose writer another process holds (with a sample in its .staging)."""
    ds = tmp_path / "ds"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ds)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        (ds / ".staging" / "m0097.partial").mkdir(parents=True, exist_ok=True)
        (ds / ".staging" / "m0097.partial" / "caption.txt").write_text("A's sample in progress")
        yield ds
    finally:
        proc.kill()
        proc.wait()


def test_second_dataset_run_on_a_held_folder_is_refused(held_folder, tmp_path, capsys, green):
    """report F1: a second dataset run on a folder another run holds is refused at once (exit 2, one line naming the
    holder), writing no row."""
    rc, _, err = cli(capsys, "dataset", green, "--out", held_folder, "--no-gate")
    assert_one_line(rc, err, "--out", "another writer")
    assert rows(held_folder) == []


def test_refused_second_run_leaves_the_first_runs_staging_alone(held_folder, tmp_path, capsys, green):
    """report F2: the refused second run does not recover (delete) the first run's .staging: its sample in progress
    is still there."""
    rc, _, _ = cli(capsys, "dataset", green, "--out", held_folder)
    assert rc == 2 and (held_folder / ".staging" / "m0097.partial" / "caption.txt").is_file()


# ------------------------------------------------------------------------------------------------------------------
# train-head


def train_head_cli(capsys, tmp_path, *extra, taesd=None, out=None):
    return cli(capsys, "train-head", "--taesd", taesd or tmp_path / "no-taesd-here", "--synthetic-only", "--crop",
               "32", "--batch", "2", "--buffer", "4", "--no-progress", "--no-monitor", "--out",
               out or tmp_path / "h.safetensors", *extra)


@pytest.mark.parametrize("flag, value", [
    pytest.param("--ckpt-every", "0", id="report H1"), pytest.param("--refresh-every", "0", id="report H2"),
    pytest.param("--batch", "0", id="report H3"), pytest.param("--threads", "-1", id="report H4"),
    pytest.param("--crop", "100000", id="report H5"), pytest.param("--lr", "1e30", id="report H6"),
    pytest.param("--steps", "-5", id="report H12")])
def test_train_head_option_refused_up_front(tmp_path, capsys, flag, value):
    """report H1-H6, H12: exit 2, one line naming the flag, before anything loads (--taesd does not exist, so
    reaching the loader would name --taesd instead)."""
    rc, _, err = train_head_cli(capsys, tmp_path, flag, value)
    assert_one_line(rc, err, flag)


def test_head_save_refuses_fp16_overflow(tmp_path):
    """report H6 (the finite check): a head whose weights overflow fp16 (1e30) is not saved (ValueError naming the
    tensor, no file)."""
    from diffumatting.matting_head.network import MattingHead
    from diffumatting.matting_head.taesd import random_tiny_autoencoder
    from diffumatting.matting_head.weights import save_head
    from diffumatting.trainer.head import TaesdBackend

    spec = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "t").spec
    head = MattingHead(spec.channels)
    with torch.no_grad():
        next(head.parameters()).fill_(1e30)
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_head(tmp_path / "h.safetensors", head, spec.info(), dtype=torch.float16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem", [pytest.param("folder", id="report H7"), pytest.param("read-only", id="report H8"),
                                     pytest.param("full", id="report H9")])
def test_train_head_out_problems_up_front(tmp_path, capsys, monkeypatch, problem):
    """report H7-H9: --out an existing folder, on a read-only file system, on a full disk: exit 2, one line naming
    --out, before training (nothing written)."""
    import shutil

    out = tmp_path / "o" / "h.safetensors"
    out.parent.mkdir()
    if problem == "folder":
        out.mkdir()
    elif problem == "read-only":
        monkeypatch.setattr("tempfile.mkstemp", read_only)
    else:
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 16 << 10))
    taesd = tiny_taesd_folder(tmp_path / "t", 8, 1)
    rc, outp, err = train_head_cli(capsys, tmp_path, "--steps", "1", taesd=taesd, out=out)
    assert_one_line(rc, err, "--out")
    assert '"step"' not in outp and [p.name for p in out.parent.iterdir()] == (["h.safetensors"] if problem == "folder"
                                                                              else [])


def tiny_taesd_folder(folder: Path, width: int, seed: int) -> Path:
    from safetensors.torch import save_file

    from diffumatting.matting_head.taesd import random_tiny_autoencoder

    ae = random_tiny_autoencoder(4, width, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        save_file({k: v.contiguous() for k, v in getattr(ae, part).state_dict().items()},
                  str(folder / f"{folder.name}_{part}.safetensors"))
    return folder


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """One 2-step train-head run on a tiny random TAESD folder (shared: copy its folder before training on), with
    the temp files a killed checkpoint save left planted beside --out first."""
    root = tmp_path_factory.mktemp("head_run")
    taesd = tiny_taesd_folder(root / "tinya", 8, 1)
    out = root / "run" / "h.safetensors"
    out.parent.mkdir()
    stale = [out.parent / ".h.ckpt.safetensors.0cbyy5j2.partial.safetensors",
             out.parent / ".h.safetensors.k2j3l4m5.partial.safetensors"]
    for p in stale:
        p.write_bytes(b"")
    rc = main([str(a) for a in ("train-head", "--taesd", taesd, "--synthetic-only", "--crop", "32", "--batch", "2",
                                "--buffer", "4", "--no-progress", "--no-monitor", "--out", out, "--steps", "2",
                                "--ckpt-every", "1")])
    assert rc == 0
    return out, stale


def test_stale_checkpoint_temp_files_are_removed(head_run):
    """report F3: temp files of a killed checkpoint save (.h.ckpt.safetensors.*.partial.safetensors) are removed by
    the next run, which leaves no temp file of its own."""
    out, stale = head_run
    assert not any(p.exists() for p in stale)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert out.is_file() and out.with_name("h.ckpt.safetensors").is_file()


@pytest.mark.parametrize("width, seed", [pytest.param(8, 2, id="report H10 same tap widths"),
                                         pytest.param(16, 1, id="report H11 other tap widths")])
def test_resume_with_another_decoder_is_one_line(head_run, tmp_path, capsys, width, seed):
    """report H10 (another decoder with the same tap widths) and report H11 (other widths): resuming is refused with
    one line (another decoder, --no-resume); the head and the checkpoint are left untouched."""
    import shutil

    out = tmp_path / "run" / "h.safetensors"
    shutil.copytree(head_run[0].parent, out.parent)
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    other = tiny_taesd_folder(tmp_path / f"other{width}", width, seed)
    rc, _, err = train_head_cli(capsys, tmp_path, "--steps", "4", taesd=other, out=out)
    assert_one_line(rc, err, "another decoder", "--no-resume")
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before


# ------------------------------------------------------------------------------------------------------------------
# train / generate (the checks that come before ComfyUI is needed)


@pytest.mark.parametrize("opts, needle", [
    pytest.param(("--caption-suffix", "on a plain background"), "--caption-suffix", id="report T4"),
    pytest.param(("--band-radius", "-1"), "--band-radius", id="report T5"),
    pytest.param(("--synthetic", "-1"), "--synthetic", id="report T6")])
def test_train_options_refused_before_the_model_loads(tmp_path, capsys, green, opts, needle):
    """report T4-T6: a suffix without the key colour word, --band-radius -1, --synthetic -1: exit 2, one line naming
    the option, before the checkpoint is loaded (it is a text file: loading it would name --checkpoint)."""
    ckpt = tmp_path / "text.safetensors"
    ckpt.write_text("not a model\n")
    (tmp_path / "data" / "blob").mkdir(parents=True)
    save(tmp_path / "data" / "blob" / "image.png", green_picture(64, 64))
    save(tmp_path / "data" / "blob" / "alpha.png", np.full((64, 64), 200, np.uint8))
    rc, _, err = cli(capsys, "train", "--checkpoint", ckpt, "--data", tmp_path / "data", "--out", tmp_path / "o",
                     "--resolution", "64", "--steps", "1", "--comfyui", tmp_path / "no-comfyui", *opts)
    assert_one_line(rc, err, needle)


@pytest.fixture()
def fake_comfyui(tmp_path) -> Path:
    """A folder that passes generate's ComfyUI check (comfy/model_management.py): the cases below fail before
    ComfyUI would start."""
    (tmp_path / "ComfyUI" / "comfy").mkdir(parents=True)
    (tmp_path / "ComfyUI" / "comfy" / "model_management.py").write_text("")
    return tmp_path / "ComfyUI"


def generate_cli(capsys, comfyui, prompts, out):
    return cli(capsys, "generate", "--comfyui", comfyui, "--checkpoint", "x.safetensors", "--prompts", prompts,
               "--count", "1", "--out", out, "--cpu")


def test_generate_prompts_not_utf8(tmp_path, capsys, fake_comfyui):
    """report G1: a --prompts file that is not UTF-8: exit 2, one line naming --prompts."""
    bad = tmp_path / "p.txt"
    bad.write_bytes(b"\xff\xfe an apple\n")
    rc, _, err = generate_cli(capsys, fake_comfyui, bad, tmp_path / "o")
    assert_one_line(rc, err, "--prompts", "UTF-8")


@pytest.mark.parametrize("problem", [pytest.param("file", id="report G2"), pytest.param("read-only", id="report G3")])
def test_generate_unusable_out(tmp_path, capsys, monkeypatch, fake_comfyui, problem):
    """report G2 (--out an existing file), report G3 (--out read-only): exit 2, one line naming --out, before
    ComfyUI starts."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("an apple\n")
    out = tmp_path / "o"
    if problem == "file":
        out.write_text("x")
    else:  # a new folder in a read-only one (the folder itself read-only: qa/bad_input_report.py, a real ro mount)
        out = tmp_path / "ro" / "g"
        out.parent.mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(out.parent) else real(p, mode))
    rc, _, err = generate_cli(capsys, fake_comfyui, prompts, out)
    assert_one_line(rc, err, "--out")


def test_generate_wrong_comfyui_leaves_no_out_folder(tmp_path, capsys):
    """report minor note (generate --comfyui /nope): one line naming --comfyui, and no empty --out folder left."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("an apple\n")
    rc, _, err = generate_cli(capsys, tmp_path / "nope", prompts, tmp_path / "o")
    assert_one_line(rc, err, "--comfyui")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------------------------
# the real `python -m diffumatting` path


def test_python_m_exit_status(tmp_path):
    """report K4 and report D3 through `python -m diffumatting` (a subprocess): exit status 2, one `error:` line
    on stderr, no traceback."""
    (tmp_path / "file").write_text("x")
    save(tmp_path / "g.png", green_picture(64, 64))
    for args, needle in ((["key", tmp_path / "g.png", "-o", tmp_path / "file"], "-o/--out"),
                         (["dataset", tmp_path / "g.png", "--out", tmp_path / "ds", "--trimap-radius", "-1"],
                          "--trimap-radius")):
        p = subprocess.run([sys.executable, "-m", "diffumatting", *map(str, args)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
