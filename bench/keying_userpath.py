"""The keying benchmark's user-path mode (``bench/keying.py --user-path``): GreenPost as users run it.

Distinct images keyed once each (cold: every image is new to the process, the first one pays the warm-up), in a
fresh process per setting, with torch's default thread count and with 1, 2 and all cores, on a quiet machine and
beside a busy process (a CPU hog the bench starts and stops); in-process (images decoded before the clock starts)
and through the CLI over a folder (``python -m diffumatting key DIR -o OUT``: PNG read + write included; its
start-up, measured on one tiny image, is reported apart); and, with ``--comfyui``, the GreenPost node in a real
ComfyUI on a batch of video frames (frames per second, s/MP, peak resident memory). The baseline (the plain
colour-difference keyer of bench/keying.py) is measured the same way in the same run; ratios are against it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _write_shots(subjects, folder: Path) -> float:
    """Write each subject's realistic green-screen shot as an 8-bit PNG; -> total megapixels."""
    import cv2

    import keying

    mp = 0.0
    for name, fg, a in subjects:
        img = keying.synth_shot(name, fg, a, "real")
        cv2.imwrite(str(folder / f"{name}.png"), np.round(img[..., ::-1] * 255).astype(np.uint8))
        mp += a.size / 1e6
    return mp


def _hog():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _child(args) -> int:
    """One cold run: decode every PNG of --_dir, then key each once with --_method; print JSON seconds/MP."""
    import cv2
    import torch

    if args.child_threads > 0:
        torch.set_num_threads(args.child_threads)
    import keying

    images = [cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
              for p in sorted(Path(args.child_dir).glob("*.png"))]
    mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
    fn = ((lambda im: keying.greenpost_keyer(im)) if args.child_method == "greenpost"
          else (lambda im: keying.baseline_keyer(im, **keying.BASELINE_PARAMS["real"])))
    t0 = time.perf_counter()
    for im in images:
        fn(np.ascontiguousarray(im))
    dt = time.perf_counter() - t0
    print(json.dumps({"s_per_mp": dt / mp, "seconds": dt, "mp": mp, "threads": torch.get_num_threads()}))
    return 0


def _run_child(method: str, threads: int, folder: Path) -> dict:
    cmd = [sys.executable, str(HERE / "keying.py"), "--_child", "--_method", method, "--_threads", str(threads),
           "--_dir", str(folder)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli_seconds(folder: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffumatting", "key", str(folder), "-o", str(out)], check=True,
                   capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - t0


def _node_child(args) -> int:
    """GreenPost node in a real ComfyUI (CPU) on --frames frames of 1280x720; print JSON frames/s, s/MP, peak MiB."""
    import torch

    from diffumatting.comfy_bootstrap import start_comfyui

    ns = start_comfyui(args.comfyui, cpu=True, output_dir=tempfile.mkdtemp(prefix="dm-bench-"))
    node = ns.node_classes["DiffuMattingGreenPost"]
    h, w, n = 720, 1280, args.frames
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    frames = []
    for i in range(n):  # a soft-edged disc with fine hair-like stripes drifting across a lit green screen
        cx = 300 + 680 * i / max(n - 1, 1)
        a = ((220 - ((xx - cx) ** 2 + (yy - 360) ** 2).sqrt()) / 6).clamp(0, 1)
        a = a * (0.75 + 0.25 * torch.sin(xx / 3 + i)).clamp(0, 1)
        screen = torch.tensor([40 / 255, 180 / 255, 70 / 255]) * (0.9 + 0.1 * xx[..., None] / w)
        fg = torch.stack([0.8 + 0 * xx, 0.35 + 0.2 * yy / h, 0.25 + 0 * xx], -1)
        frames.append(a[..., None] * fg + (1 - a[..., None]) * screen)
    batch = (torch.stack(frames) * 255).round() / 255
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    node.execute(image=batch)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"fps": n / dt, "s_per_mp": dt / (n * h * w / 1e6), "seconds": dt, "peak_mib": peak,
                      "before_mib": before, "threads": torch.get_num_threads()}))
    return 0


def run(subjects, args) -> int:
    cores = os.cpu_count() or 1
    settings = [0, 1, 2, cores] if cores > 2 else [0, 1, 2]
    with tempfile.TemporaryDirectory(prefix="dm-userpath-") as tmp:
        folder = Path(tmp) / "shots"
        folder.mkdir()
        mp = _write_shots(subjects, folder)
        print(f"User-path keying: {len(subjects)} distinct realistic green-screen images, {mp:.1f} MP, keyed once "
              f"each in a fresh process per setting ({cores} cores; threads 0 = torch's default)", flush=True)
        rows = []
        for load in ("quiet", "busy"):
            hog = _hog() if load == "busy" else None
            try:
                for threads in settings:
                    base = _run_child("baseline", threads, folder)
                    gp = _run_child("greenpost", threads, folder)
                    rows.append((load, threads, gp, base))
                    print(f"  {load:5s} threads {threads}: greenpost {gp['s_per_mp']:.3f} s/MP "
                          f"(torch threads {gp['threads']}), baseline {base['s_per_mp']:.3f} s/MP", flush=True)
                tiny = Path(tmp) / "tiny"
                tiny.mkdir(exist_ok=True)
                import cv2

                cv2.imwrite(str(tiny / "t.png"), np.full((64, 64, 3), (70, 180, 40), np.uint8))
                start = _cli_seconds(tiny, Path(tmp) / f"out_tiny_{load}")
                cli = _cli_seconds(folder, Path(tmp) / f"out_{load}")
                rows.append((load, "cli", cli, start))
                print(f"  {load:5s} CLI over the folder: {cli:.1f} s ({cli / mp:.3f} s/MP incl. start-up; start-up "
                      f"{start:.1f} s -> {(cli - start) / mp:.3f} s/MP)", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
        print()
        print("| load | threads | GreenPost s/MP | baseline s/MP | GreenPost / baseline | GreenPost / its 1-thread time |")
        print("|---|---|---:|---:|---:|---:|")
        one = {load: gp["s_per_mp"] for load, t, gp, _ in rows if t == 1}
        for load, threads, gp, base in rows:
            if threads == "cli":
                continue
            print(f"| {load} | {threads or 'default'} | {gp['s_per_mp']:.3f} | {base['s_per_mp']:.3f} | "
                  f"{gp['s_per_mp'] / base['s_per_mp']:.2f} | {gp['s_per_mp'] / one[load]:.2f} |")
        for load, kind, cli, start in rows:
            if kind == "cli":
                print(f"| {load} | CLI (default threads, PNG I/O) | {(cli - start) / mp:.3f} (start-up excluded) | - | - | "
                      f"{cli / mp:.3f} incl. {start:.1f} s start-up |")
    if args.comfyui:
        cmd = [sys.executable, str(HERE / "keying.py"), "--_node-child", "--comfyui", args.comfyui,
               "--frames", str(args.frames)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print()
        print(f"GreenPost node in ComfyUI (CPU, {args.frames} frames 1280x720, one batch, default threads "
              f"{r['threads']}): {r['fps']:.2f} frames/s, {r['s_per_mp']:.3f} s/MP, {r['seconds']:.1f} s; peak RSS "
              f"{r['peak_mib']:.0f} MiB (ComfyUI + frames before keying {r['before_mib']:.0f} MiB)")
    return 0
