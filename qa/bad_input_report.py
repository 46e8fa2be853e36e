#!/usr/bin/env python
"""Rerun every case of the bad-input report (``../shared/docs/bad-input-report.md``) as the report ran it.

Usage (from the repository root, with the venv's Python so the subprocesses run the installed pack)::

    COMFYUI_PATH=/work/comfyui .venv/bin/python qa/bad_input_report.py [--only K1,N3,...] [--keep]

* The inputs are rebuilt here (numpy / PIL / OpenCV) in a temp folder; nothing is downloaded.
* CLI cases run as subprocesses ``python -m diffumatting ...`` (this Python), the way the report ran them.
* Node cases run in-process in a real ComfyUI (``tests/integration/conftest.py``'s ``_bootstrap``, the tests' own
  harness and test nodes) when ``COMFYUI_PATH`` is set; otherwise they are listed as SKIP.
* Python API cases call the pack directly.
* Read-only and full-disk outputs are real tmpfs mounts (``mount -t tmpfs -o ro`` / ``size=300k``) when this
  process may mount (root in a container); otherwise a path under /sys stands in for a read-only folder (root gets
  EACCES there, not EROFS: said in the row) and disk-full cases are listed as not reproduced. A chmod'ed folder is
  not used: root writes through it.

Prints one row per case: id | case | expected (the documented behaviour) | got | OK / BAD / SKIP, then the counts
and the total time. Exit status: 0 when no case is BAD, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIFFUMATTING_SHARED", REPO.parent / "shared"))
TAEF2 = SHARED / "data" / "models" / "taef2"
COMFYUI = os.environ.get("COMFYUI_PATH", "")
PY = sys.executable
RANDOM_SD15 = Path(os.environ.get("DIFFUMATTING_TEST_CACHE", Path.home() / ".cache" / "diffumatting-tests")) / \
    "random_sd15.safetensors"


# ------------------------------------------------------------------------------------------------------------------
# results


@dataclass
class Row:
    id: str
    case: str
    expected: str
    got: str
    verdict: str  # OK, BAD, SKIP


ROWS: list[Row] = []
CASES: list = []


def case(cid: str, what: str, expected: str):
    """Register a case function ``f(ctx) -> (ok: bool | None, got: str)`` (None = could not be reproduced)."""

    def wrap(fn):
        CASES.append((cid, what, expected, fn))
        return fn

    return wrap


# ------------------------------------------------------------------------------------------------------------------
# running the CLI


@dataclass
class Res:
    rc: int
    out: str
    err: str
    secs: float

    @property
    def first_err(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith("error:")]
        return (errs or lines or ["(no stderr)"])[0]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.err + self.out


def dm(*args, timeout: float = 600, vmem_kb: int | None = None, cwd: Path = REPO) -> Res:
    """``python -m diffumatting ARGS`` as a subprocess (optionally under ``ulimit -v``)."""

    def limit():
        if vmem_kb:
            resource.setrlimit(resource.RLIMIT_AS, (vmem_kb * 1024, vmem_kb * 1024))

    env = dict(os.environ, PYTHONWARNINGS="default")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([PY, "-m", "diffumatting", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, env=env)
        return Res(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)
    except subprocess.TimeoutExpired as exc:
        return Res(-9, str(exc.stdout or ""), f"TIMEOUT after {timeout} s", time.perf_counter() - t0)


def short(text: str, n: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def one_line_error(res: Res, *needles: str) -> tuple[bool, str]:
    """exit 2, no traceback, an ``error:`` line that names ``needles``."""
    line = res.first_err
    ok = res.rc == 2 and not res.traceback and line.startswith("error:") and all(n in line for n in needles)
    tb = ", TRACEBACK" if res.traceback else ""
    return ok, f"exit {res.rc}{tb}: {short(line)}"


def files_under(root: Path) -> dict[str, int]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


# ------------------------------------------------------------------------------------------------------------------
# read-only and full file systems


class Mounts:
    """Small tmpfs mounts (read-only, or tiny / filled up), unmounted at the end."""

    def __init__(self, base: Path):
        self.base, self.points, self.can_mount = base, [], None

    def _mount(self, opts: str) -> Path | None:
        point = Path(tempfile.mkdtemp(prefix="mnt.", dir=self.base))
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if p.returncode != 0:
            self.can_mount = False
            self.why = p.stderr.strip()
            return None
        self.can_mount = True
        self.points.append(point)
        return point

    def read_only(self) -> tuple[Path, str]:
        """-> (a read-only folder, how it was made)."""
        point = self._mount("ro,size=64k")
        if point is not None:
            return point, "tmpfs mounted ro (EROFS)"
        return Path("/sys/kernel"), "/sys/kernel (no mount allowed: root gets EACCES there, not EROFS)"

    def small(self, size_k: int = 300, leave_k: int | None = None) -> Path | None:
        """A ``size_k`` KiB tmpfs; with ``leave_k``, filled up until only that much is free."""
        point = self._mount(f"size={size_k}k")
        if point is None or leave_k is None:
            return point
        filler = point / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            with contextlib.suppress(OSError):  # until ENOSPC
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave_k * 1024))
        return point

    def close(self):
        for point in reversed(self.points):
            subprocess.run(["umount", str(point)], capture_output=True)


# ------------------------------------------------------------------------------------------------------------------
# inputs


def _green_picture(w: int, h: int, seed: int = 0, noisy: bool = False, cx: float = 0.5):
    """uint8 RGB [H,W,3]: a soft-edged textured disc on chroma green."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.3 * min(w, h)
    dist = np.hypot(xs - cx * w, ys - 0.5 * h)
    a = np.clip((r - dist) / 3 + 0.5, 0, 1)[..., None]
    fg = np.stack([0.8 + 0 * xs, 0.3 + 0.2 * np.sin(xs / 5), 0.5 + 0 * xs], -1)
    if noisy:
        fg = np.clip(fg + rng.uniform(-0.3, 0.3, fg.shape), 0, 1)
    green = np.array([0.0, 177 / 255, 64 / 255], np.float32)
    img = a * fg + (1 - a) * green
    return (img * 255).round().astype(np.uint8)


def write_rgb(path: Path, rgb, **pil_kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, **pil_kw)
    return path


def flat_png(path: Path, w: int, h: int, value: int = 128) -> Path:
    """A flat RGB PNG of any size, streamed (no w*h array in memory)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes([value]) * (3 * w)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
        f.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def make_inputs(I: Path) -> None:
    import cv2
    import numpy as np
    from PIL import Image

    I.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:256, 0:256]
    img = np.full((256, 256, 3), 128, np.uint8)
    img[np.hypot(xs - 128, ys - 128) < 64] = (230, 26, 26)
    write_rgb(I / "red_on_grey.png", img)
    # stored 497 wide x 800 high, Orientation 6 (rotate 90 degrees clockwise): viewers show 800x497
    exif = Image.Exif()
    exif[0x0112] = 6
    write_rgb(I / "exif6.jpg", _green_picture(497, 800, cx=0.3), exif=exif, quality=92)
    write_rgb(I / "coll" / "a.jpg", _green_picture(96, 96, 1), quality=92)
    write_rgb(I / "coll" / "a.png", _green_picture(96, 96, 2))
    nan = np.full((64, 64, 3), 0.5, np.float32)
    nan[10, 10, 1] = np.nan
    cv2.imwrite(str(I / "nan.tiff"), nan)
    flat_png(I / "big12k.png", 12000, 12000)
    write_rgb(I / "noise.png", np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    write_rgb(I / "good.png", _green_picture(720, 720, 3, noisy=True))  # its keyed RGBA PNG is about 600 KiB
    write_rgb(I / "g.png", _green_picture(96, 96, 4))
    la = np.zeros((96, 96, 2), np.uint8)
    la[..., 0], la[..., 1] = 90, 255
    la[20:70, 20:70, 1] = 128
    Image.fromarray(la, "LA").save(I / "la.png")
    hot = np.full((64, 64, 3), 0.5, np.float32)
    hot[:8, :8] = 3.0
    cv2.imwrite(str(I / "hot.tiff"), hot)


# ------------------------------------------------------------------------------------------------------------------
# context


class Ctx:
    def __init__(self, root: Path):
        self.root = root
        self.I = root / "imgs"
        self.mounts = Mounts(root)
        self._n = 0

    def fresh(self, name: str) -> Path:
        """A new, not yet existing path under the scratch folder."""
        self._n += 1
        return self.root / "out" / f"{self._n:03d}_{name}"

    def folder(self, name: str) -> Path:
        p = self.fresh(name)
        p.mkdir(parents=True)
        return p


def needs_taef2():
    if not (TAEF2 / "taef2_decoder.safetensors").is_file():
        return None, f"TAEF2 not found under {TAEF2}"
    return True, ""


# ------------------------------------------------------------------------------------------------------------------
# CLI key / demo


@case("K1", "key red_on_grey.png -o out/rog (red disc on flat grey, auto key)",
      "exit 0, a 'no key colour' warning, fully opaque alpha (object and background 255)")
def k1(c):
    import cv2

    out = c.fresh("rog")
    r = dm("key", c.I / "red_on_grey.png", "-o", out)
    a = cv2.imread(str(out / "red_on_grey_rgba.png"), cv2.IMREAD_UNCHANGED)
    if a is None:
        return False, f"exit {r.rc}: no output; {short(r.first_err)}"
    centre, corner = int(a[128, 128, 3]), int(a[2, 2, 3])
    warned = "warning" in r.out.lower() and "key colour" in r.out.lower()
    ok = r.rc == 0 and centre == 255 and corner == 255 and warned and not r.traceback
    return ok, f"exit {r.rc}; alpha centre {centre}, corner {corner}; warning: {warned}"


@case("K2", "key exif6.jpg (stored 497x800, EXIF Orientation 6)", "output upright, 800x497 like viewers/LoadImage")
def k2(c):
    import cv2

    out = c.fresh("exif")
    r = dm("key", c.I / "exif6.jpg", "-o", out)
    a = cv2.imread(str(out / "exif6_rgba.png"), cv2.IMREAD_UNCHANGED)
    if a is None:
        return False, f"exit {r.rc}: no output; {short(r.first_err)}"
    w, h = a.shape[1], a.shape[0]
    return r.rc == 0 and (w, h) == (800, 497), f"exit {r.rc}; wrote {w}x{h}"


@case("K3", "key coll/ -o out with coll/a.jpg and coll/a.png", "exit 0, two distinct outputs, a note")
def k3(c):
    out = c.fresh("coll")
    r = dm("key", c.I / "coll", "-o", out)
    files = sorted(files_under(out))
    ok = r.rc == 0 and len(files) == 2 and "note:" in r.out
    return ok, f"exit {r.rc}; files {files}; note: {'note:' in r.out}"


@case("K4a", "key good.png -o <existing file>", "exit 2, one line naming -o/--out, no traceback")
def k4a(c):
    f = c.fresh("file")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("x")
    return one_line_error(dm("key", c.I / "good.png", "-o", f), "-o")


@case("K4b", "key good.png -o /proc/x", "exit 2, one line naming -o/--out")
def k4b(c):
    return one_line_error(dm("key", c.I / "good.png", "-o", "/proc/x"), "-o")


@case("K4c", "key good.png -o <read-only fs>/k", "exit 2, one line naming -o/--out")
def k4c(c):
    ro, how = c.mounts.read_only()
    ok, got = one_line_error(dm("key", c.I / "good.png", "-o", ro / "k"), "-o")
    return ok, f"{got} [{how}]"


@case("K4d", "key good.png -o <300 KiB tmpfs> (output ~1 MB)", "exit 2, one line naming -o/--out, no partial file")
def k4d(c):
    small = c.mounts.small(300)
    if small is None:
        return None, f"not reproduced: cannot mount a tmpfs ({c.mounts.why})"
    r = dm("key", c.I / "good.png", "-o", small / "k")
    ok, got = one_line_error(r, "-o")
    left = files_under(small)
    return ok and not left, f"{got}; files left: {left or 'none'}"


@case("K5a", "demo -o <existing file>", "exit 2, one line naming -o/--out")
def k5a(c):
    f = c.fresh("file")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("x")
    return one_line_error(dm("demo", "-o", f), "-o")


@case("K5b", "demo -o <read-only fs>", "exit 2, one line naming -o/--out")
def k5b(c):
    ro, how = c.mounts.read_only()
    ok, got = one_line_error(dm("demo", "-o", ro), "-o")
    return ok, f"{got} [{how}]"


@case("K5c", "demo -o <full tmpfs> (16 KiB left)", "exit 2, one line naming -o/--out, no partial file")
def k5c(c):
    full = c.mounts.small(300, leave_k=16)
    if full is None:
        return None, f"not reproduced: cannot mount a tmpfs ({c.mounts.why})"
    r = dm("demo", "-o", full / "d")
    ok, got = one_line_error(r, "-o")
    left = files_under(full / "d")
    return ok and not left, f"{got}; files left in it: {left or 'none'}"


@case("K6", "demo --image nan.tiff (float32 TIFF with a NaN)", "exit 2, one line naming the file and NaN")
def k6(c):
    return one_line_error(dm("demo", "--image", c.I / "nan.tiff", "-o", c.fresh("nan")), "nan.tiff", "NaN")


@case("K7", "(ulimit -v 14000000; key big12k.png -o out) (12000x12000 flat PNG)",
      "refused up front: exit 2, one line naming the size and the memory limit, no traceback")
def k7(c):
    out = c.fresh("big")
    r = dm("key", c.I / "big12k.png", "-o", out, vmem_kb=14_000_000)
    # the per-image message is printed first, then the summary line; both must be clean
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    named = any("12000x12000" in ln and "Mpx" in ln for ln in lines)
    ok = r.rc == 2 and not r.traceback and named and all(ln.startswith("error:") for ln in lines)
    # the stated limit must fit the 14 GB address space the run had, or a slightly smaller image (10000x10000)
    # would pass the check and then fail inside the keying, as the report saw
    import re

    m = re.search(r"limit of ([\d.]+) Mpx.*?about (\d+) bytes per pixel", r.err)
    fits = bool(m) and float(m.group(1)) * 1e6 * int(m.group(2)) <= 14_000_000 * 1024
    return ok and fits, (f"exit {r.rc} in {r.secs:.1f} s: {short(lines[0] if lines else '', 230)}; stated limit "
                         f"within the ulimit: {fits}")


@case("K8", "demo --image noise.png (no key colour)",
      "exit 0, the summary says no screen was found (no 'key colour #...'), no raw Python warnings")
def k8(c):
    r = dm("demo", "--image", c.I / "noise.png", "-o", c.fresh("noise"))
    says_key = "key colour #" in r.out
    raw = "Warning" in r.err
    ok = r.rc == 0 and not says_key and not raw and "no green" in r.out
    first = r.out.splitlines()[0] if r.out else ""
    return ok, f"exit {r.rc}; {short(first, 110)}; raw warnings on stderr: {raw}"


# ------------------------------------------------------------------------------------------------------------------
# CLI dataset


@case("D1", "dataset good.png --out <read-only fs>/ds", "exit 2, one line naming --out")
def d1(c):
    ro, how = c.mounts.read_only()
    ok, got = one_line_error(dm("dataset", c.I / "good.png", "--out", ro / "ds"), "--out")
    return ok, f"{got} [{how}]"


@case("D2", "dataset with a non-UTF-8 caption .txt beside the image",
      "exit 2, one line naming the caption file, before keying (no --out folder)")
def d2(c):
    src = c.folder("cap")
    shutil.copy(c.I / "g.png", src / "x.png")
    (src / "x.txt").write_bytes(b"\xff\xfebad caption")
    out = c.fresh("ds")
    ok, got = one_line_error(dm("dataset", src, "--out", out), "x.txt", "UTF-8")
    return ok and not out.exists(), f"{got}; --out created: {out.exists()}"


def _dataset_option_case(c, *opts, needle):
    out = c.fresh("ds")
    ok, got = one_line_error(dm("dataset", c.I / "g.png", "--out", out, *opts), needle)
    return ok and not out.exists(), f"{got}; --out created: {out.exists()}"


@case("D3", "dataset --trimap-radius -1", "exit 2 up front naming --trimap-radius, nothing keyed or created")
def d3(c):
    return _dataset_option_case(c, "--trimap-radius", "-1", needle="--trimap-radius")


@case("D4", "dataset --trimap-radius 1000000", "exit 2 up front naming --trimap-radius (0..256)")
def d4(c):
    return _dataset_option_case(c, "--trimap-radius", "1000000", needle="--trimap-radius")


@case("D5", "dataset --min-coverage 0.9 --max-coverage 0.1", "exit 2 up front naming --min-coverage/--max-coverage")
def d5(c):
    return _dataset_option_case(c, "--min-coverage", "0.9", "--max-coverage", "0.1", needle="--min-coverage")


def _rows(ds: Path) -> list[dict]:
    rows = []
    for name in ("metadata.jsonl", "rejected.jsonl"):
        f = ds / name
        if f.is_file():
            rows += [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
    return rows


@case("D6", "dataset nm1/ (a_b.png) then nm2/ ('a b.png', a_b.png) --out S",
      "both nm2 files keyed under distinct names; 3 rows, 3 distinct sources, no duplicate")
def d6(c):
    nm1, nm2 = c.folder("nm1"), c.folder("nm2")
    shutil.copy(c.I / "g.png", nm1 / "a_b.png")
    shutil.copy(c.I / "g.png", nm2 / "a b.png")
    shutil.copy(c.I / "g.png", nm2 / "a_b.png")
    ds = c.fresh("S")
    r1 = dm("dataset", nm1, "--out", ds, "--no-gate")
    r2 = dm("dataset", nm2, "--out", ds, "--no-gate")
    rows = _rows(ds)
    names = [r["name"] for r in rows]
    sources = [os.path.relpath(r["source"], c.root / "out") for r in rows]
    ok = r1.rc == 0 and r2.rc == 0 and len(rows) == 3 and len(set(names)) == 3 and len(set(sources)) == 3
    return ok, f"exits {r1.rc}/{r2.rc}; rows {list(zip(names, sources))}"


@case("D7", "finished 6-sample set, line 3 of metadata.jsonl cut to 40 bytes, dataset <one done image> --out <copy>",
      "non-zero exit, one line naming metadata.jsonl and line 3; no row and no file removed")
def d7(c):
    src = c.folder("dsin")
    for i in range(6):
        write_rgb(src / f"s{i}.png", _green_picture(96, 96, 10 + i))
    ds = c.fresh("full")
    r0 = dm("dataset", src, "--out", ds, "--no-gate")
    if r0.rc != 0:
        return False, f"could not build the set: exit {r0.rc}: {short(r0.first_err)}"
    meta = ds / "metadata.jsonl"
    lines = meta.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]
    meta.write_bytes(b"\n".join(lines))
    before, meta_before = files_under(ds), meta.read_bytes()
    r = dm("dataset", src / "s0.png", "--out", ds, "--no-gate")
    after = files_under(ds)
    line = r.first_err
    ok = (r.rc != 0 and not r.traceback and "metadata.jsonl" in line and "3" in line
          and meta.read_bytes() == meta_before and set(before) <= set(after))
    return ok, (f"exit {r.rc}: {short(line)}; metadata unchanged: {meta.read_bytes() == meta_before}; "
                f"files removed: {sorted(set(before) - set(after)) or 'none'}")


@case("D8", "dataset on an RGBA PNG whose alpha channel is fully opaque",
      "a note that the opaque alpha channel is ignored; the picture is keyed (alpha not all opaque)")
def d8(c):
    import cv2
    import numpy as np
    from PIL import Image

    rgb = _green_picture(96, 96, 20)
    src = c.folder("opaque")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(src / "o.png")
    ds = c.fresh("ds")
    r = dm("dataset", src, "--out", ds, "--no-gate")
    alphas = list((ds / "alpha").glob("*.png")) if (ds / "alpha").is_dir() else []
    keyed = bool(alphas) and int(cv2.imread(str(alphas[0]), cv2.IMREAD_UNCHANGED).min()) < 255
    noted = "fully opaque" in r.err
    return r.rc == 0 and keyed and noted, f"exit {r.rc}; note: {noted}; keyed (alpha min < 255): {keyed}"


# ------------------------------------------------------------------------------------------------------------------
# CLI train-head


def head_args(out, *extra):
    return ("train-head", "--taesd", TAEF2, "--synthetic-only", "--crop", "64", "--batch", "2", "--buffer", "8",
            "--no-progress", "--out", out, *extra)


def _head_option_case(c, flag, value):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    out = c.fresh("h") / "f.safetensors"
    r = dm(*head_args(out, flag, value))
    good, got = one_line_error(r, flag)
    trained = '"step"' in r.out
    return good and not trained and not out.exists(), f"{got}; trained: {trained}"


for _cid, _flag, _value in (("H1", "--ckpt-every", "0"), ("H2", "--refresh-every", "0"), ("H3", "--batch", "0"),
                            ("H4", "--threads", "-1"), ("H5", "--crop", "100000"), ("H6", "--lr", "1e30"),
                            ("H12", "--steps", "-5")):
    case(_cid, f"train-head {_flag} {_value}", f"exit 2 up front, one line naming {_flag}, nothing trained or written")(
        lambda c, f=_flag, v=_value: _head_option_case(c, f, v))


@case("H6b", "save_head with weights that overflow fp16 (1e30), and a head with inf loaded",
      "ValueError naming the tensor, nothing written; loading an inf head is a ValueError")
def h6b(c):
    import torch

    from diffumatting.matting_head.network import MattingHead
    from diffumatting.matting_head.taesd import random_tiny_autoencoder
    from diffumatting.matting_head.weights import load_head, save_head
    from diffumatting.trainer.head import TaesdBackend

    spec = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "qa").spec
    head = MattingHead(spec.channels)
    with torch.no_grad():
        next(head.parameters()).fill_(1e30)
    out = c.folder("h6") / "inf.safetensors"
    try:
        save_head(out, head, spec.info(), dtype=torch.float16)
        saved = "saved"
    except ValueError as exc:
        saved = f"ValueError: {exc}"
    # a file with inf written by someone else is refused on load
    from safetensors.torch import save_file

    ok_head = MattingHead(spec.channels)
    save_head(out.with_name("ok.safetensors"), ok_head, spec.info())
    from safetensors import safe_open

    with safe_open(str(out.with_name("ok.safetensors")), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    k0 = next(iter(sd))
    sd[k0] = sd[k0].clone().fill_(float("inf"))
    save_file(sd, str(out.with_name("bad.safetensors")), metadata=meta)
    try:
        load_head(out.with_name("bad.safetensors"))
        loaded = "loaded"
    except ValueError as exc:
        loaded = f"ValueError: {exc}"
    ok = saved.startswith("ValueError") and "NaN or infinite" in saved and not out.exists() and \
        loaded.startswith("ValueError")
    return ok, f"save: {short(saved, 90)}; file written: {out.exists()}; load: {short(loaded, 70)}"


@case("H7", "train-head --out <existing folder named x.safetensors>", "exit 2 up front naming --out, no training")
def h7(c):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    out = c.folder("h7") / "x.safetensors"
    out.mkdir()
    r = dm(*head_args(out))
    good, got = one_line_error(r, "--out")
    return good and '"step"' not in r.out, got


@case("H8", "train-head --out <read-only fs>/a.safetensors", "exit 2 up front naming --out, no training")
def h8(c):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    ro, how = c.mounts.read_only()
    r = dm(*head_args(ro / "a.safetensors"))
    good, got = one_line_error(r, "--out")
    return good and '"step"' not in r.out, f"{got} [{how}]"


@case("H9", "train-head --out <full tmpfs (16 KiB left)>/h.safetensors",
      "exit 2, one line naming --out (up front: not enough room), no partial file")
def h9(c):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    full = c.mounts.small(300, leave_k=16)
    if full is None:
        return None, f"not reproduced: cannot mount a tmpfs ({c.mounts.why})"
    r = dm(*head_args(full / "h.safetensors"))
    good, got = one_line_error(r, "--out")
    left = sorted(set(files_under(full)) - {"filler.bin"})
    return good and not left and '"step"' not in r.out, f"{got}; files left: {left or 'none'}"


def _random_taesd(folder: Path, width: int, seed: int) -> Path:
    from safetensors.torch import save_file

    from diffumatting.matting_head.taesd import random_tiny_autoencoder

    ae = random_tiny_autoencoder(4, width, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ae.encoder.state_dict().items()}, str(folder / f"{folder.name}_encoder.safetensors"))
    save_file({k: v.contiguous() for k, v in ae.decoder.state_dict().items()}, str(folder / f"{folder.name}_decoder.safetensors"))
    return folder


class _TrainedHead:
    """One short TAEF2 run (4 steps, a checkpoint every 2) shared by H10, H11 and F3."""

    def __init__(self, c: Ctx):
        self.folder = c.folder("resume")
        self.out = self.folder / "h.safetensors"
        # F3: temp files a kill during a checkpoint save left (the names the report found)
        self.stale = [self.folder / ".h.ckpt.safetensors.0cbyy5j2.partial.safetensors",
                      self.folder / ".h.safetensors.k2j3l4m5.partial.safetensors"]
        for p in self.stale:
            p.write_bytes(b"")
        self.res = dm(*head_args(self.out, "--steps", "4", "--ckpt-every", "2", "--no-monitor"))


_TRAINED: dict = {}


def trained(c) -> _TrainedHead:
    if "h" not in _TRAINED:
        _TRAINED["h"] = _TrainedHead(c)
    return _TRAINED["h"]


def _resume_other_decoder(c, width):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    t = trained(c)
    if t.res.rc != 0:
        return False, f"base run failed: exit {t.res.rc}: {short(t.res.first_err)}"
    other = _random_taesd(c.root / f"rand{width}", width, seed=width)
    before = {p.name: sha(p) for p in t.folder.glob("*.safetensors")}
    args = list(head_args(t.out, "--steps", "6", "--no-monitor"))
    args[args.index("--taesd") + 1] = other
    r = dm(*args)
    after = {p.name: sha(p) for p in t.folder.glob("*.safetensors")}
    good, got = one_line_error(r, "another decoder")
    return good and before == after, f"{got}; head and checkpoint unchanged: {before == after}"


@case("H10", "train TAEF2 into h.safetensors (4 steps), resume with --taesd rand64 (4-ch latent, 64-wide taps)",
      "exit 2, one line: the checkpoint is for another decoder (--no-resume); files untouched")
def h10(c):
    return _resume_other_decoder(c, 64)


@case("H11", "the same resume with rand8 (8-wide taps)", "exit 2, one line (another decoder, tap widths), no traceback")
def h11(c):
    return _resume_other_decoder(c, 8)


# ------------------------------------------------------------------------------------------------------------------
# CLI train


def _train_data(c) -> Path:
    d = c.root / "traindata"
    if not d.exists():
        import numpy as np

        from diffumatting.synthetic import synthetic_matte

        fg, a = synthetic_matte(64, 1, "shapes")
        write_rgb(d / "blob" / "image.png", (fg.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        write_rgb(d / "blob" / "alpha.png", (a[0].numpy() * 255).round().astype(np.uint8))
    return d


def train_args(c, ckpt, *extra):
    return ("train", "--checkpoint", ckpt, "--data", _train_data(c), "--out", c.fresh("lora"), "--cpu",
            "--resolution", "64", "--steps", "1", "--comfyui", COMFYUI, "--no-progress", *extra)


def _needs_comfyui():
    return None if COMFYUI else "COMFYUI_PATH not set"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@case("T1", "train --checkpoint evil.ckpt (a pickle whose payload creates a file)",
      "exit 2, one line naming --checkpoint; the payload never runs")
def t1(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    marker = c.root / "PWNED"
    evil = c.root / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil(str(marker))}))
    ok, got = one_line_error(dm(*train_args(c, evil)), "--checkpoint")
    return ok and not marker.exists(), f"{got}; payload ran: {marker.exists()}"


@case("T2", "train --checkpoint <text file>.safetensors", "exit 2, one line naming --checkpoint")
def t2(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    txt = c.root / "text.safetensors"
    txt.write_text("this is not a model\n" * 50)
    return one_line_error(dm(*train_args(c, txt)), "--checkpoint")


@case("T3", "train --checkpoint <first 1 MB of the random full SD1.5 file>", "exit 2, one line naming --checkpoint")
def t3(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    cut = c.root / "cut.safetensors"
    if RANDOM_SD15.is_file():
        with open(RANDOM_SD15, "rb") as f:
            cut.write_bytes(f.read(1 << 20))
        what = "first 1 MB of random_sd15.safetensors"
    else:  # the same kind of file: a valid header, its data cut off
        import torch
        from safetensors.torch import save

        data = save({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(512, 1024)})
        cut.write_bytes(data[: 1 << 20])
        what = "a 2 MB safetensors cut to 1 MB (random_sd15 not cached)"
    ok, got = one_line_error(dm(*train_args(c, cut)), "--checkpoint")
    return ok, f"{got} [{what}]"


def _train_option_case(c, *opts, needle):
    if _needs_comfyui():
        return None, _needs_comfyui()
    # a --checkpoint that cannot load: reaching the model load would give a --checkpoint error instead
    txt = c.root / "text.safetensors"
    txt.write_text("this is not a model\n" * 50)
    return one_line_error(dm(*train_args(c, txt, *opts)), needle)


@case("T4", 'train --caption-suffix "on a plain background" (no key-colour word)',
      "exit 2 up front, one line naming --caption-suffix (before the model loads)")
def t4(c):
    return _train_option_case(c, "--caption-suffix", "on a plain background", needle="--caption-suffix")


@case("T5", "train --band-radius -1", "exit 2 up front, one line naming --band-radius")
def t5(c):
    return _train_option_case(c, "--band-radius", "-1", needle="--band-radius")


@case("T6", "train --synthetic -1", "exit 2 up front, one line naming --synthetic")
def t6(c):
    return _train_option_case(c, "--synthetic", "-1", needle="--synthetic")


# ------------------------------------------------------------------------------------------------------------------
# CLI generate


def gen_args(c, prompts, out, comfyui=None):
    return ("generate", "--comfyui", comfyui or COMFYUI, "--checkpoint", "random_sd15.safetensors", "--prompts",
            prompts, "--count", "1", "--out", out, "--cpu", "--size", "64", "--steps", "1")


def _prompts(c) -> Path:
    p = c.root / "prompts.txt"
    p.write_text("a red apple\n")
    return p


@case("G1", "generate --prompts <not UTF-8>", "exit 2, one line naming --prompts")
def g1(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    bad = c.root / "bad_prompts.txt"
    bad.write_bytes(b"\xff\xfe a red apple\n")
    return one_line_error(dm(*gen_args(c, bad, c.fresh("gen"))), "--prompts")


@case("G2", "generate --out <existing file>", "exit 2, one line naming --out")
def g2(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    f = c.fresh("file")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("x")
    return one_line_error(dm(*gen_args(c, _prompts(c), f)), "--out")


@case("G3", "generate --out <read-only fs> (the folder itself, and a new folder in it)",
      "exit 2, one line naming --out, both")
def g3(c):
    if _needs_comfyui():
        return None, _needs_comfyui()
    ro, how = c.mounts.read_only()
    a = one_line_error(dm(*gen_args(c, _prompts(c), ro)), "--out")
    b = one_line_error(dm(*gen_args(c, _prompts(c), ro / "g")), "--out")
    return a[0] and b[0], f"{a[1]} | {b[1]} [{how}]"


# ------------------------------------------------------------------------------------------------------------------
# Faults


@case("F1", "two dataset runs on one folder (B started while A holds it)",
      "B refused at once (exit 2, one line naming the holder); A's rows: one per input, no duplicate")
def f1(c):
    return _concurrent(c)["F1"]


@case("F2", "B (one image, same --out) started 3 times while A keys 60 images",
      "A finishes (exit 0, no traceback) with every sample; each B refused")
def f2(c):
    return _concurrent(c)["F2"]


_CONC: dict = {}


def _concurrent(c):
    if _CONC:
        return _CONC
    src = c.folder("many")
    n = 60
    for i in range(n):
        write_rgb(src / f"m{i:03d}.png", _green_picture(96, 96, 100 + i))
    one = c.folder("one")
    write_rgb(one / "x.png", _green_picture(96, 96, 999))
    ds = c.fresh("conc")
    a = subprocess.Popen([PY, "-m", "diffumatting", "dataset", str(src), "--out", str(ds), "--no-gate"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (ds / "metadata.jsonl").exists() and a.poll() is None and time.time() - t0 < 120:
        time.sleep(0.1)  # A holds the lock from open; its first row means it is well inside the run
    bs, late = [], 0
    for _ in range(3):
        if a.poll() is not None:
            break
        b = dm("dataset", one, "--out", ds, "--no-gate")
        if b.rc == 0 and a.poll() is not None:
            late += 1  # A finished while B started up: B took the free folder, as it should (not a case)
        else:
            bs.append(b)
    a_out, a_err = a.communicate(timeout=900)
    rows = _rows(ds)
    names = [r["name"] for r in rows]
    sources = [r["source"] for r in rows]
    want = n + (1 if late else 0)
    b_ok = bool(bs) and all(one_line_error(b, "--out")[0] for b in bs)
    b_line = one_line_error(bs[0], "--out")[1] if bs else "A finished before B could start (inconclusive)"
    unique = len(rows) == want and len(set(names)) == want and len(set(sources)) == want
    tb = "Traceback" in a_err
    _CONC["F1"] = (b_ok and unique if bs else None,
                   f"B: {b_line}; rows {len(rows)} (want {want}), unique names {len(set(names))}")
    _CONC["F2"] = (bool(bs) and a.returncode == 0 and not tb and unique and b_ok if bs else None,
                   f"A exit {a.returncode}, traceback: {tb}; {len(bs)} B runs while A ran, all refused: {b_ok}"
                   f"{f' ({late} B after A ended: it ran)' if late else ''}; rows {len(rows)}")
    return _CONC


@case("F3", "a checkpoint save killed mid-write left .h.ckpt.safetensors.*.partial.safetensors (planted) beside --out",
      "the next train-head run removes them; it leaves no temp file (.partial, .tmp*) itself")
def f3(c):
    ok, why = needs_taef2()
    if not ok:
        return None, why
    t = trained(c)
    left = [p.name for p in t.stale if p.exists()]
    temp = sorted(p.name for p in t.folder.iterdir() if p.name.startswith("."))
    good = t.res.rc == 0 and not left and not temp
    return good, f"run exit {t.res.rc}; planted left: {left or 'none'}; hidden/temp files now: {temp or 'none'}"


# ------------------------------------------------------------------------------------------------------------------
# Python API


P_OPTIONS = [("P1", "refine_eps", float("nan")), ("P2", "unmix_reg", float("nan")), ("P3", "noise_black", float("nan")),
             ("P4", "noise_white", float("nan")), ("P5", "fg_model_tol", float("nan")), ("P6", "screen_cells", 0),
             ("P7", "fg_cells", 0), ("P8", "refine_radius", 10 ** 6)]


def _p_case(c, option, value):
    import torch

    from diffumatting.greenpost import green_post
    from diffumatting.synthetic import synthetic_matte

    fg, a = synthetic_matte(384, 7, "fine")
    green = torch.tensor([0.0, 177 / 255, 64 / 255])[:, None, None]
    image = (a * fg + (1 - a) * green)[None]
    try:
        res = green_post(image, **{option: value})
    except ValueError as exc:
        msg = str(exc)
        return msg.startswith(option) or f"{option}" in msg.split(":")[0], f"ValueError: {short(msg, 110)}"
    except Exception as exc:  # noqa: BLE001 (what the report saw: ZeroDivisionError, MemoryError)
        return False, f"{type(exc).__name__}: {short(str(exc), 100)}"
    nan = int((~torch.isfinite(res.alpha)).sum()) + int((~torch.isfinite(res.fg)).sum())
    return False, f"no error; {nan} non-finite output values"


for _cid, _opt, _val in P_OPTIONS:
    case(_cid, f"green_post(image, {_opt}={_val!r}) on a 384 px matte composite",
         f"ValueError naming {_opt} and its range, before any work")(lambda c, o=_opt, v=_val: _p_case(c, o, v))


# ------------------------------------------------------------------------------------------------------------------
# Minor notes


@case("M2", "generate --comfyui /nope --out <new folder>", "exit 2, one line naming --comfyui, no --out folder left")
def m2(c):
    out = c.fresh("gen_nope")
    ok, got = one_line_error(dm(*gen_args(c, _prompts(c), out, comfyui="/nope")), "--comfyui")
    return ok and not out.exists(), f"{got}; --out left: {out.exists()}"


@case("M3", "key la.png (an LA PNG: grey + alpha)", "the greyscale note (not 'no recognisable key colour'), exit 0")
def m3(c):
    r = dm("key", c.I / "la.png", "-o", c.fresh("la"))
    grey = "greyscale" in r.out
    nokey = "no recognisable key colour" in r.out
    return r.rc == 0 and grey and not nokey, f"exit {r.rc}; greyscale note: {grey}; no-key warning: {nokey}"


@case("M4", "key hot.tiff (float TIFF with values up to 3)", "keyed; a warning that values above 1 were clipped")
def m4(c):
    r = dm("key", c.I / "hot.tiff", "-o", c.fresh("hot"))
    warned = "clipped" in r.out + r.err
    return r.rc == 0 and warned, f"exit {r.rc}; clipping warned: {warned}"


@case("M5", "dataset on a folder with an unreadable image and a good one",
      "the unreadable one named and skipped, the good one keyed, exit 2 with the count")
def m5(c):
    src = c.folder("mixed")
    (src / "a_bad.png").write_bytes(b"not an image")
    shutil.copy(c.I / "g.png", src / "b_good.png")
    ds = c.fresh("ds")
    r = dm("dataset", src, "--out", ds, "--no-gate")
    rows = _rows(ds)
    ok = r.rc == 2 and len(rows) == 1 and "1 of 2" in r.err and not r.traceback
    return ok, f"exit {r.rc}; rows {len(rows)}; {short(r.first_err, 100)}"


# ------------------------------------------------------------------------------------------------------------------
# Nodes in a real ComfyUI (in-process, the integration tests' harness)


class Comfy:
    def __init__(self, root: Path):
        spec = importlib.util.spec_from_file_location("dm_qa_integration_conftest",
                                                      REPO / "tests" / "integration" / "conftest.py")
        self.h = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.h)
        self.ns = self.h._bootstrap(root / "comfy")
        from diffumatting.comfy_bootstrap import PromptRunner

        self.runner = PromptRunner(self.ns)
        import logging

        logging.getLogger().setLevel(logging.CRITICAL)  # ComfyUI logs each (expected) node error with its traceback
        self.nodes = self.ns.nodes.NODE_CLASS_MAPPINGS
        self.output = Path(self.ns.folder_paths.get_output_directory())
        self._register()

    def _register(self):
        import torch

        class DMQARGBA:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"kind": (["fine", "nan_fg", "nan_alpha", "nan_background", "empty"], {})}}

            RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
            FUNCTION = "make"
            CATEGORY = "testing"

            def make(self, kind):
                n = 0 if kind == "empty" else 2
                g = torch.Generator().manual_seed(0)
                fg, alpha = torch.rand(n, 64, 64, 3, generator=g), torch.rand(n, 64, 64, generator=g)
                bg = torch.rand(max(n, 1), 64, 64, 3, generator=g)
                if kind == "nan_fg":
                    fg[1, 5, 6, 0] = float("nan")
                elif kind == "nan_alpha":
                    alpha[0, 7, 8] = float("nan")
                elif kind == "nan_background":
                    bg[0, 9, 10, 2] = float("nan")
                return fg, alpha, bg

        class DMQALatent:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"kind": (["empty", "nan", "huge", "fine"], {})}}

            RETURN_TYPES = ("LATENT",)
            FUNCTION = "make"
            CATEGORY = "testing"

            def make(self, kind):
                z = torch.zeros(0 if kind == "empty" else 1, 4, 8, 8)
                if kind == "nan":
                    z[0, 1, 2, 3] = float("nan")
                elif kind == "huge":
                    z[0, 0, 0, 0] = 1e30
                return ({"samples": z},)

        for cls in (DMQARGBA, DMQALatent):
            self.nodes[cls.__name__] = cls

    def defaults(self, class_type: str, **given) -> dict:
        """Every widget input at its default (combos: the default or first option), then ``given``."""
        spec = self.nodes[class_type].INPUT_TYPES()
        out = {}
        for group in ("required", "optional"):
            for name, value in spec.get(group, {}).items():
                kind, opts = value[0], (value[1] if len(value) > 1 else {})
                if isinstance(kind, list):
                    out[name] = opts.get("default", kind[0] if kind else None)
                elif isinstance(opts, dict) and "default" in opts:
                    out[name] = opts["default"]
        for name in list(out):
            if out[name] is None:
                del out[name]
        out.update(given)
        return out

    def run(self, prompt: dict):
        """-> (None, captured) on success, or (ComfyUI's error detail dict / message, None)."""
        from diffumatting.comfy_bootstrap import PromptError

        self.h.CAPTURED.clear()
        try:
            self.runner.run(prompt)
        except PromptError as exc:
            return (exc.detail if exc.kind == "execution" else {"exception_type": "validation",
                                                               "exception_message": str(exc)}), None
        return None, dict(self.h.CAPTURED)


def _node_error(comfy: Comfy, prompt: dict, name: str, *words: str) -> tuple[bool, str]:
    err, got = comfy.run(prompt)
    if err is None:
        vals = [v for v in (got or {}).values() if hasattr(v, "isfinite")]
        nan = sum(int((~v.isfinite()).sum()) for v in vals)
        return False, f"ran without error; {nan} NaN/inf output values"
    kind, msg = str(err.get("exception_type", "?")), str(err.get("exception_message", "")).strip()
    ok = kind.endswith("ValueError") and msg.startswith(f"{name}") and all(w in msg for w in words)
    return ok, f"{kind.rsplit('.', 1)[-1]}: {short(msg, 120)}"


def cap(ref) -> dict:
    return {"cap": {"class_type": "DMTestCapture", "inputs": {"value": ref, "key": "out"}}}


NODE_CASES: list = []


def node_case(cid, what, expected):
    def wrap(fn):
        NODE_CASES.append((cid, what, expected, fn))
        return fn

    return wrap


@node_case("N1", "GreenPost, empty batch [0,64,64,3]", "ValueError naming image (empty batch)")
def n1(cf, c):
    p = {"src": {"class_type": "DMQARGBA", "inputs": {"kind": "empty"}},
         "gp": {"class_type": "DiffuMattingGreenPost", "inputs": cf.defaults("DiffuMattingGreenPost", image=["src", 0])},
         **cap(["gp", 0])}
    return _node_error(cf, p, "image", "empty")


@node_case("N2", "SaveMattingDataset, empty batch", "ValueError naming the input (empty batch), nothing written")
def n2(cf, c):
    before = files_under(cf.output)
    p = {"src": {"class_type": "DMQARGBA", "inputs": {"kind": "empty"}},
         "ds": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": cf.defaults(
             "DiffuMattingSaveMattingDataset", image=["src", 0], fg=["src", 0], alpha=["src", 1], folder="qa_n2",
             name="s")}}
    ok, got = _node_error(cf, p, "", "empty")
    new = sorted(set(files_under(cf.output)) - set(before))
    return ok and not new, f"{got}; new files: {new or 'none'}"


def _composite(cf, kind, linear):
    return {"src": {"class_type": "DMQARGBA", "inputs": {"kind": kind}},
            "ac": {"class_type": "DiffuMattingAlphaComposite", "inputs": cf.defaults(
                "DiffuMattingAlphaComposite", fg=["src", 0], alpha=["src", 1], background=["src", 2],
                linear_light=linear)},
            **cap(["ac", 0])}


for _i, (_kind, _name) in enumerate((("nan_fg", "fg"), ("nan_alpha", "alpha"), ("nan_background", "background"))):
    node_case(f"N3{'abc'[_i]}", f"AlphaComposite, one NaN in {_name} (linear_light off and on)",
              f"ValueError naming {_name} (NaN), both modes")(
        lambda cf, c, k=_kind, n=_name: (lambda a, b: (a[0] and b[0], f"{a[1]} | linear: {b[1][:40]}"))(
            _node_error(cf, _composite(cf, k, False), n, "NaN"), _node_error(cf, _composite(cf, k, True), n, "NaN")))


@node_case("N4", "PreviewRGBA with a NaN fg", "ValueError naming fg (NaN), no NaN IMAGE")
def n4(cf, c):
    p = {"src": {"class_type": "DMQARGBA", "inputs": {"kind": "nan_fg"}},
         "pv": {"class_type": "DiffuMattingPreviewRGBA", "inputs": {"fg": ["src", 0], "alpha": ["src", 1], "square": 8}},
         **cap(["pv", 0])}
    return _node_error(cf, p, "fg", "NaN")


def _save(cf, kind, fmt, prefix):
    return {"src": {"class_type": "DMQARGBA", "inputs": {"kind": kind}},
            "sv": {"class_type": "DiffuMattingSaveRGBA", "inputs": cf.defaults(
                "DiffuMattingSaveRGBA", fg=["src", 0], alpha=["src", 1], format=fmt, filename_prefix=prefix)}}


def _save_case(cf, kind, fmt, name, words):
    before = files_under(cf.output)
    dirs = {p for p in cf.output.rglob("*") if p.is_dir()}
    ok, got = _node_error(cf, _save(cf, kind, fmt, f"qa_{kind}_{fmt}/x"), name, *words)
    new = sorted(set(files_under(cf.output)) - set(before))
    new_dirs = sorted(str(p.relative_to(cf.output)) for p in set(p for p in cf.output.rglob("*") if p.is_dir()) - dirs
                      if any(p.iterdir()) is False)
    return ok and not new and not new_dirs, f"{got}; new files: {new or 'none'}; empty folders: {new_dirs or 'none'}"


node_case("N5a", "SaveRGBA, NaN fg, format png", "ValueError naming fg, nothing written")(
    lambda cf, c: _save_case(cf, "nan_fg", "png", "fg", ("NaN",)))
node_case("N5b", "SaveRGBA, NaN alpha, format png16", "ValueError naming alpha, nothing written")(
    lambda cf, c: _save_case(cf, "nan_alpha", "png16", "alpha", ("NaN",)))
node_case("N5c", "SaveRGBA, NaN fg, format webm", "ValueError naming fg, nothing written")(
    lambda cf, c: _save_case(cf, "nan_fg", "webm", "fg", ("NaN",)))
node_case("N6a", "SaveRGBA, empty batch, format webm", "ValueError (empty batch), no 0-byte .webm")(
    lambda cf, c: _save_case(cf, "empty", "webm", "fg", ("empty",)))
node_case("N6b", "SaveRGBA, empty batch, format png_sequence", "ValueError (empty batch), no empty folder")(
    lambda cf, c: _save_case(cf, "empty", "png_sequence", "fg", ("empty",)))


def _head_file(cf, name="qa_head.safetensors") -> Path:
    """A matting head for the tiny SD1.5 VAE's decoder, in models/diffumatting."""
    path = cf.ns.models_dir / "diffumatting" / name
    if not path.is_file():
        from diffumatting.matting_head.network import MattingHead
        from diffumatting.matting_head.taps import tap_spec
        from diffumatting.matting_head.weights import save_head

        vae = cf.h.tiny_models("sd15").vae
        spec = tap_spec(vae.first_stage_model)
        save_head(path, MattingHead(spec.channels), {**spec.info(), "name": "qa-tiny-sd15"}, {"steps": 0})
    return path


def _decode(cf, latent_kind, head="qa_head.safetensors"):
    return {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
            "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": head}},
            "lat": {"class_type": "DMQALatent", "inputs": {"kind": latent_kind}},
            "dec": {"class_type": "DiffuMattingMattingHeadDecode", "inputs": cf.defaults(
                "DiffuMattingMattingHeadDecode", samples=["lat", 0], vae=["m", 2], head=["load", 0])},
            **cap(["dec", 1])}


@node_case("N7", "MattingHeadDecode, empty latent batch", "ValueError naming samples (empty)")
def n7(cf, c):
    _head_file(cf)
    return _node_error(cf, _decode(cf, "empty"), "samples", "empty")


@node_case("N8", "MattingHeadDecode, NaN latent and 1e30 latent", "ValueError naming samples (not image), both")
def n8(cf, c):
    _head_file(cf)
    a = _node_error(cf, _decode(cf, "nan"), "samples")
    b = _node_error(cf, _decode(cf, "huge"), "samples")
    return a[0] and b[0], f"{a[1]} | 1e30: {b[1]}"


@node_case("N9", 'GreenControlSampler, subject "a green apple", suffix "isolated on a plain studio background"',
           "ValueError naming suffix (no colour word), nothing sampled")
def n9(cf, c):
    inputs = cf.defaults("DiffuMattingGreenControlSampler", model=["m", 0], clip=["m", 1], vae=["m", 2],
                         subject="a green apple", suffix="isolated on a plain studio background", steps=1, width=64,
                         height=64, batch_size=1)
    p = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
         "n": {"class_type": "DiffuMattingGreenControlSampler", "inputs": inputs}, **cap(["n", 1])}
    return _node_error(cf, p, "suffix", "green")


def _crafted(cf, name, edit) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = _head_file(cf)
    with safe_open(str(src), "pt") as f:
        meta, sd = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(sd, str(src.with_name(name)), metadata=meta)
    return name


def _cfg_edit(**changes):
    def edit(meta):
        cfg = json.loads(meta.get("config", "{}"))
        cfg.update(changes)
        meta["config"] = json.dumps(cfg)

    return edit


def _loader_case(cf, name, field):
    p = {"load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": name}}, **cap(["load", 0])}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ok, got = _node_error(cf, p, "", name, field)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    ok = ok and grew < 1024
    return ok, f"{got}; peak RSS +{grew:.0f} MB"


node_case("N10a", "DiffuMattingLoader, metadata tap_channels that do not match the weights",
          "ValueError naming the file and tap_channels")(
    lambda cf, c: _loader_case(cf, _crafted(cf, "qa_taps.safetensors",
                                            lambda m: m.update(tap_channels="[16, 16, 16, 16]")), "tap_channels"))
node_case("N10b", "DiffuMattingLoader, config.width_16=200000", "ValueError naming the file and width_16, no allocation")(
    lambda cf, c: _loader_case(cf, _crafted(cf, "qa_w16.safetensors", _cfg_edit(width_16=200000)), "width_16"))
node_case("N10c", 'DiffuMattingLoader, config.blocks_32="many"', "ValueError naming the file and blocks_32")(
    lambda cf, c: _loader_case(cf, _crafted(cf, "qa_blocks.safetensors", _cfg_edit(blocks_32="many")), "blocks_32"))
node_case("N10d", 'DiffuMattingLoader, latent_channels="abc"', "ValueError naming the file and latent_channels")(
    lambda cf, c: _loader_case(cf, _crafted(cf, "qa_lat.safetensors", lambda m: m.update(latent_channels="abc")),
                               "latent_channels"))


def _outside(cf, c, name):
    target = c.root / f"outside_{name}"
    target.mkdir(exist_ok=True)
    link = cf.output / f"linkdir_{name}"
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return target, link.name


@node_case("S1", 'SaveRGBA, filename_prefix="linkdir/evil" with output/linkdir -> a folder outside',
           "ValueError naming filename_prefix; nothing written outside the output folder")
def s1(cf, c):
    target, link = _outside(cf, c, "s1")
    ok, got = _node_error(cf, _save(cf, "fine", "png", f"{link}/evil"), "filename_prefix")
    return ok and not files_under(target), f"{got}; files outside: {sorted(files_under(target)) or 'none'}"


@node_case("S2", 'SaveMattingDataset, folder="linkdir/ds" with output/linkdir -> a folder outside',
           "ValueError naming folder; nothing written outside")
def s2(cf, c):
    target, link = _outside(cf, c, "s2")
    p = {"src": {"class_type": "DMQARGBA", "inputs": {"kind": "fine"}},
         "ds": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": cf.defaults(
             "DiffuMattingSaveMattingDataset", image=["src", 0], fg=["src", 0], alpha=["src", 1],
             folder=f"{link}/ds", name="s", quality_gate=False)}}
    ok, got = _node_error(cf, p, "folder")
    return ok and not files_under(target), f"{got}; files outside: {sorted(files_under(target)) or 'none'}"


@node_case("S3", "DiffuMattingLoader, a head whose config says width_16=20000 (~14 GB if built)",
           "ValueError naming width_16 before any network is built (no large allocation)")
def s3(cf, c):
    return _loader_case(cf, _crafted(cf, "qa_w16b.safetensors", _cfg_edit(width_16=20000)), "width_16")


@node_case("M1", 'SaveRGBA, filename_prefix="" (empty)', "ValueError naming filename_prefix; no hidden ._00001_.png")
def m1(cf, c):
    before = files_under(cf.output)
    ok, got = _node_error(cf, _save(cf, "fine", "png", ""), "filename_prefix")
    new = sorted(set(files_under(cf.output)) - set(before))
    return ok and not new, f"{got}; new files: {new or 'none'}"


# ------------------------------------------------------------------------------------------------------------------
# main


def _verdict(ok) -> str:
    return "SKIP" if ok is None else ("OK" if ok else "BAD")


def _run_one(cid, what, expected, fn, *args):
    t0 = time.perf_counter()
    try:
        ok, got = fn(*args)
    except Exception as exc:  # noqa: BLE001 (a crash of the harness or of the pack is a BAD row, not a stop)
        import traceback

        ok, got = False, f"QA harness crash: {type(exc).__name__}: {short(str(exc), 120)} @ " + \
            short(traceback.format_exc().strip().splitlines()[-3], 80)
    ROWS.append(Row(cid, what, expected, got, _verdict(ok)))
    print(f"[{time.perf_counter() - t0:5.1f} s] {cid:5s} {_verdict(ok):4s} {got}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated ids or prefixes (K,N3,...)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--markdown", default="", help="also write the table as markdown to this file")
    args = ap.parse_args(argv)
    want = [w.strip() for w in args.only.split(",") if w.strip()]

    def wanted(cid):
        # "K" selects K1..K8; "N3" selects N3a..N3c but not N30
        return not want or any(cid == w or (cid.startswith(w) and not (w[-1].isdigit() and cid[len(w):len(w) + 1]
                                                                       .isdigit())) for w in want)

    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="dm_qa_"))
    ctx = Ctx(root)
    try:
        make_inputs(ctx.I)
        for cid, what, expected, fn in CASES:
            if wanted(cid):
                _run_one(cid, what, expected, fn, ctx)
        todo = [n for n in NODE_CASES if wanted(n[0])]
        if todo:
            if not COMFYUI:
                for cid, what, expected, _ in todo:
                    ROWS.append(Row(cid, what, expected, "COMFYUI_PATH not set", "SKIP"))
            else:
                comfy = Comfy(root)
                for cid, what, expected, fn in todo:
                    _run_one(cid, what, expected, fn, comfy, ctx)
    finally:
        ctx.mounts.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    total = time.perf_counter() - t0
    print_table(ROWS, total, args.markdown)
    return 1 if any(r.verdict == "BAD" for r in ROWS) else 0


def print_table(rows, total, markdown=""):
    lines = ["| id | case | expected (documented) | got | result |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r.id, r.case, r.expected, r.got, r.verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    counts = {v: sum(r.verdict == v for r in rows) for v in ("OK", "BAD", "SKIP")}
    summary = f"{len(rows)} cases: {counts['OK']} OK, {counts['BAD']} BAD, {counts['SKIP']} SKIP; total {total:.0f} s"
    print("\n" + "\n".join(lines) + "\n\n" + summary)
    if markdown:
        Path(markdown).write_text("\n".join(lines) + "\n\n" + summary + "\n")


if __name__ == "__main__":
    sys.exit(main())
