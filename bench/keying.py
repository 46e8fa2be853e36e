#!/usr/bin/env python
"""Keying benchmark: GreenPost against classical keyers on real ground-truth mattes over a synthetic green screen.

    .venv/bin/python bench/keying.py                      # both variants, all methods, ../shared/data/mattes
    .venv/bin/python bench/keying.py --variant real --methods greenpost,baseline --per-subject
    .venv/bin/python bench/keying.py --frame-4k           # also key one 3840x2160 frame (memory / time check)
    .venv/bin/python bench/keying.py --user-path [--comfyui PATH]   # as users run it: cold, default threads, CLI, node
    .venv/bin/python bench/keying.py --methods greenpost,baseline,learned --keyer f0.safetensors,...,f4.safetensors
                                                          # the learned keyer cross-validated (train-head --fold I/5)
    .venv/bin/python bench/keying.py --methods greenpost,learned,side --keyer k0,k1,k2 --side-head s0,s1,s2
                                                          # the side-decoder question (same folds, same images)

Each subject (``<dir>/<name>/alpha.png`` + ``image.png`` or ``fg.png`` as the foreground colour) is composited in
sRGB, ``I = a F + (1 - a) B``, over a synthetic screen in two variants, seeded from the subject's name:
- ``clean``: one flat green per subject (hue, saturation and brightness drawn around a chroma green), 8-bit;
- ``real``: that green with a linear lighting gradient, vignetting, a smooth low-frequency fabric modulation, green
  spill onto the subject near its edges (screen light times the subject's albedo), read + shot noise, 8-bit and
  JPEG quality 90.
Methods: ``greenpost`` (default mode), ``greenpost_hq`` (high-quality switch), ``baseline`` (plain colour
difference ``G - max(R, B)`` against the estimated screen colour, unmixing and despill, black/white points tuned
per variant on a grid), ``side`` (the side-decoder experiment of issue 15: GreenPost refined by a decoder-taps head
that reads the image plus TAEF2's features of its latent; ``--side-head`` files, held out per subject like
``learned``), ``learned`` (GreenPost refined by an image-only keyer, ``matting_head.refine``; each subject by
the first ``--keyer`` file that did not train on it, default the shipped one), ``pymatting`` (closed-form matting on an automatic trimap from the baseline key, foreground
by multi-level estimation). Metrics (bench/metrics.py): SAD, MSE, Grad, Conn on alpha and the premultiplied
foreground MSE, whole image. Time: median seconds per megapixel of the keyer call on the first 5 subjects, all
methods single-threaded (``--threads``) in the same run, interleaved (each repeat runs every method on every subject
in rotating order). Ratios are against ``baseline``. ``pymatting`` runs after all other methods of every variant:
once numba (pymatting) has run, torch code in the same process slows down many times over (measured: GreenPost
30x). Timings need a quiet machine: compare the in-run ratios.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mattes"


import metrics  # noqa: E402  (bench/metrics.py; the script's folder is on sys.path)
from heldout import HeldOutModels, subject_categories  # noqa: E402  (bench/heldout.py)

# ------------------------------------------------------------------------------------------------ data + screen


def load_subjects(data_dir: Path, limit: int | None = None, max_side: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """-> [(name, fg HxWx3 float32 [0,1], alpha HxW float32 [0,1])] sorted by name; with ``max_side``, subjects
    larger than that are downscaled (area filter) to it on their long side."""
    import cv2

    out = []
    for d in sorted(p for p in data_dir.iterdir() if (p / "alpha.png").is_file()):
        a = cv2.imread(str(d / "alpha.png"), cv2.IMREAD_UNCHANGED)
        a = (a[..., 0] if a.ndim == 3 else a).astype(np.float32) / (65535.0 if a.dtype == np.uint16 else 255.0)
        colour = d / "fg.png" if (d / "fg.png").is_file() else d / "image.png"
        fg = cv2.imread(str(colour), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
        if fg.shape[:2] != a.shape:
            raise ValueError(f"{d.name}: colour {fg.shape[:2]} and alpha {a.shape} differ in size")
        scale = max_side / max(a.shape) if max_side else 1.0
        if scale < 1:
            size = (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale)))
            fg = cv2.resize(fg, size, interpolation=cv2.INTER_AREA)
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        out.append((d.name, np.ascontiguousarray(fg), a))
        if limit and len(out) >= limit:
            break
    return out


def _rng(name: str, stream: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"diffumatting-keying|{name}|{stream}".encode()))


def synth_shot(name: str, fg: np.ndarray, alpha: np.ndarray, variant: str) -> np.ndarray:
    """-> the green-screen shot HxWx3 float32 in [0,1] (8-bit values), deterministic in (name, variant)."""
    import cv2
    from scipy.ndimage import gaussian_filter

    r = _rng(name, "screen")
    h0, s0, v0 = colorsys.rgb_to_hsv(40 / 255, 180 / 255, 70 / 255)
    hue = (h0 + r.uniform(-8, 8) / 360) % 1.0
    sat = float(np.clip(s0 * r.uniform(0.88, 1.1), 0, 1))
    val = float(np.clip(v0 * r.uniform(0.85, 1.1), 0, 1))
    screen = np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32)
    h, w = alpha.shape
    plate = np.broadcast_to(screen, (h, w, 3)).astype(np.float32)
    lit = fg
    if variant == "real":
        r = _rng(name, "real")
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        half = max(h, w) / 2
        u, v = (xx - w / 2) / half, (yy - h / 2) / half
        angle = r.uniform(0, 2 * np.pi)
        light = 1 + 0.5 * r.uniform(0.05, 0.2) * (u * np.cos(angle) + v * np.sin(angle))
        light *= 1 - r.uniform(0.05, 0.25) * np.clip((u * u + v * v) / 2, 0, 1)
        grid = r.standard_normal((5, 5)).astype(np.float32)
        fabric = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        light *= 1 + r.uniform(0.01, 0.04) * fabric / (np.abs(fabric).max() + 1e-6)
        plate = np.clip(screen * light[..., None], 0, 1).astype(np.float32)
        sigma = r.uniform(0.008, 0.025) * float(np.hypot(h, w))
        near = gaussian_filter(1 - alpha, sigma, mode="nearest")[..., None]
        lit = np.clip(fg + r.uniform(0.15, 0.4) * near * (0.3 + 0.7 * fg) * plate, 0, 1)
        read, shot = r.uniform(0.003, 0.008), r.uniform(0.0002, 0.0008)
    comp = alpha[..., None] * lit + (1 - alpha[..., None]) * plate
    if variant == "real":
        noise = _rng(name, "noise").standard_normal(comp.shape).astype(np.float32)
        comp = comp + np.sqrt(read**2 + shot * np.clip(comp, 0, 1)) * noise
    img8 = np.round(np.clip(comp, 0, 1) * 255).astype(np.uint8)
    if variant == "real":
        ok, buf = cv2.imencode(".jpg", img8[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 90])
        img8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(img8.astype(np.float32) / 255.0)


# ------------------------------------------------------------------------------------------------------ methods

# Plain colour-difference keyer: alpha = clamp((1 - r - black) / (white - black)), r = (G - max(R,B)) / that of the
# screen colour (median of strongly green pixels). Grid-tuned per variant on the development mattes.
BASELINE_PARAMS = {"clean": {"black": 0.0, "white": 1.0}, "real": {"black": 0.08, "white": 0.95}}  # --tune-baseline result
BASELINE_GRID = [(b, w) for b in (0.0, 0.015, 0.03, 0.05, 0.08) for w in (0.7, 0.8, 0.87, 0.9, 0.95, 1.0)]


def _screen_estimate(img: np.ndarray) -> np.ndarray:
    d = img[..., 1] - np.maximum(img[..., 0], img[..., 2])
    top = float(np.percentile(d, 99))
    if top <= 0.05:
        return np.array([40 / 255, 180 / 255, 70 / 255], np.float32)
    return np.median(img[d > 0.5 * top], axis=0).astype(np.float32)


def baseline_keyer(img: np.ndarray, black: float, white: float) -> tuple[np.ndarray, np.ndarray]:
    """Colour difference + unmixing against the flat screen colour + despill (G <= max(R, B))."""
    k = _screen_estimate(img)
    dk = max(float(k[1] - max(k[0], k[2])), 0.05)
    r = (img[..., 1] - np.maximum(img[..., 0], img[..., 2])) / dk
    a = np.clip((1 - r - black) / (white - black), 0, 1).astype(np.float32)
    safe = np.maximum(a, 1e-3)[..., None]
    fg = np.where(a[..., None] > 1e-3, np.clip((img - (1 - a[..., None]) * k) / safe, 0, 1), img)
    fg[..., 1] = np.minimum(fg[..., 1], np.maximum(fg[..., 0], fg[..., 2]))
    return a, fg


def pymatting_keyer(img: np.ndarray, black: float, white: float, margin: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form matting (Levin et al.) on a trimap from the baseline key (confident parts eroded by margin px)."""
    import cv2
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    rough, _ = baseline_keyer(img, black, white)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    fg = cv2.erode((rough >= 0.98).astype(np.uint8), kernel)
    bg = cv2.erode((rough <= 0.02).astype(np.uint8), kernel)
    trimap = np.full(rough.shape, 0.5)
    trimap[fg > 0], trimap[bg > 0] = 1.0, 0.0
    if not (fg.any() and bg.any()):
        return rough, img
    a = np.clip(estimate_alpha_cf(img.astype(np.float64), trimap), 0, 1)
    return a.astype(np.float32), estimate_foreground_ml(img.astype(np.float64), a).astype(np.float32)


def greenpost_keyer(img: np.ndarray, high_quality: bool = False, **options) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from diffumatting.greenpost import green_post

    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    res = green_post(t, high_quality=high_quality, **options)
    return res.alpha[0, 0].numpy(), res.fg[0].permute(1, 2, 0).numpy()


def learned_keyer(img: np.ndarray, keyers: HeldOutModels, name: str | None) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from diffumatting.matting_head.refine import learned_green_post

    head, _ = keyers.for_subject(name or "")
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    res = learned_green_post(t, head)
    return res.alpha[0, 0].numpy(), res.fg[0].permute(1, 2, 0).numpy()


_SIDE_DECODER = {}  # TAESD-family folder -> its backend, loaded once


def side_decoder_keyer(img: np.ndarray, heads: HeldOutModels, name: str | None, taesd: str) -> tuple[np.ndarray, np.ndarray]:
    """The side-decoder set-up of issue 15: GreenPost's alpha refined by a decoder-taps head (train-head --taesd DIR
    --head-image original) that reads the image itself plus the tiny decoder's features of the image's latent, then
    GreenPost with that alpha (as the learned mode does with the image-only keyer)."""
    import torch
    import torch.nn.functional as F

    from diffumatting.greenpost import green_post
    from diffumatting.matting_head.taesd import load_tiny_autoencoder
    from diffumatting.trainer.head import TaesdBackend

    if taesd not in _SIDE_DECODER:
        ae = load_tiny_autoencoder(taesd)
        _SIDE_DECODER[taesd] = TaesdBackend(ae, ae.name, head_image="original")
    backend = _SIDE_DECODER[taesd]
    head, _ = heads.for_subject(name or "")
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    first = green_post(t)
    if not all(k.found and k.usable for k in first.keys):
        return first.alpha[0, 0].numpy(), first.fg[0].permute(1, 2, 0).numpy()
    h, w = t.shape[-2:]
    pad = (0, -w % 16, 0, -h % 16)  # the encoder's latent grid (replicated border, cropped back below)
    x, prior = F.pad(t, pad, mode="replicate"), F.pad(first.alpha, pad, mode="replicate")
    with torch.no_grad():
        _, taps = backend.decode_taps(backend.encode(x))
        alpha = head(taps, x, prior, key=first.key_colour.float())["alpha"][..., :h, :w]
    res = green_post(t, alpha=alpha, key_colour=first.keys)
    return res.alpha[0, 0].numpy(), res.fg[0].permute(1, 2, 0).numpy()


def make_methods(names: list[str], variant: str, baseline_params: dict, keyers: HeldOutModels | None = None,
                 sides: HeldOutModels | None = None, taesd: str = "") -> dict:
    bp = baseline_params[variant]
    table = {
        "greenpost": lambda im, name=None: greenpost_keyer(im),
        "greenpost_hq": lambda im, name=None: greenpost_keyer(im, high_quality=True),
        "baseline": lambda im, name=None: baseline_keyer(im, **bp),
        "pymatting": lambda im, name=None: pymatting_keyer(im, **bp),
    }
    if keyers is not None:
        table["learned"] = lambda im, name=None: learned_keyer(im, keyers, name)
    if sides is not None:
        table["side"] = lambda im, name=None: side_decoder_keyer(im, sides, name, taesd)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(table)}")
    return {n: table[n] for n in names}


# -------------------------------------------------------------------------------------------------------- runs


def tune_baseline(subjects, shots) -> dict:
    best = None
    for black, white in BASELINE_GRID:
        m = float(np.mean([metrics.mse(baseline_keyer(img, black, white)[0], a) for (_, _, a), img in zip(subjects, shots)]))
        if best is None or m < best[0]:
            best = (m, black, white)
    return {"black": best[1], "white": best[2]}


def run_variant(subjects, variant: str, names: list[str], baseline_params: dict, repeats: int, per_subject: bool,
                keyers=None, sides=None, taesd: str = ""):
    shots = [synth_shot(n, fg, a, variant) for n, fg, a in subjects]
    if "tune" in baseline_params:
        baseline_params = dict(baseline_params)
        baseline_params[variant] = tune_baseline(subjects, shots)
        print(f"[{variant}] baseline tuned: {baseline_params[variant]}", flush=True)
    methods = make_methods(names, variant, baseline_params, keyers, sides, taesd)
    results = {}
    for mname, fn in methods.items():  # quality: one run per subject
        fn(shots[0][:128, :128].copy(), subjects[0][0])  # warm-up: imports, JIT
        rows = []
        for (sname, fg, gt), img in zip(subjects, shots):
            alpha, pred_fg = fn(img, sname)
            if not (np.isfinite(alpha).all() and np.isfinite(pred_fg).all()):
                raise SystemExit(f"{mname} returned NaN/inf on {sname}")
            rows.append(dict(subject=sname, **metrics.all_metrics(np.clip(alpha, 0, 1), gt, np.clip(pred_fg, 0, 1), fg)))
            print(f"  [{variant}] {mname:13s} {sname:32s} MSE {rows[-1]['MSE']:7.3f}  FgMSE {rows[-1]['FgMSE']:6.3f}",
                  flush=True)
        results[mname] = dict(rows=rows)
    # time: methods interleaved (every repeat, every subject, the methods in rotating order), so a slow spell of a
    # shared machine hits all of them alike; median seconds per megapixel over the first 5 subjects
    times = {m: [] for m in methods}
    order = list(methods)
    for r in range(repeats):
        for k, ((sname, _, gt), img) in enumerate(list(zip(subjects, shots))[:5]):
            mp = gt.size / 1e6
            rot = (r + k) % len(order)
            for mname in order[rot:] + order[:rot]:
                t0 = time.perf_counter()
                methods[mname](img, sname)
                times[mname].append((time.perf_counter() - t0) / mp)
    for mname in methods:
        results[mname]["sec_per_mp"] = statistics.median(times[mname])
    return results


def format_table(variant: str, results: dict, per_subject: bool, categories: dict | None = None) -> str:
    keys = ["SAD", "MSE", "Grad", "Conn", "FgMSE"]
    base = results.get("baseline")
    lines = [f"### {variant} (n={len(next(iter(results.values()))['rows'])})", "",
             "| method | SAD /1e3 | MSE x1e3 | Grad /1e3 | Conn /1e3 | FgMSE x1e3 | s/MP | MSE / base | FgMSE / base "
             "| worst subject MSE / base | time / base |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        mean = {k: float(np.mean([row[k] for row in r["rows"]])) for k in keys}
        if base:
            bmean = {k: float(np.mean([row[k] for row in base["rows"]])) for k in keys}
            worst = max(row["MSE"] / max(brow["MSE"], 1e-9) for row, brow in zip(r["rows"], base["rows"]))
            ratios = (f"{mean['MSE'] / bmean['MSE']:.3f} | {mean['FgMSE'] / bmean['FgMSE']:.3f} | {worst:.2f} | "
                      f"{r['sec_per_mp'] / base['sec_per_mp']:.2f}")
        else:
            ratios = "- | - | - | -"
        lines.append(f"| {name} | {mean['SAD']:.2f} | {mean['MSE']:.3f} | {mean['Grad']:.2f} | {mean['Conn']:.2f} | "
                     f"{mean['FgMSE']:.3f} | {r['sec_per_mp']:.3f} | {ratios} |")
    names = list(results)
    rows0 = next(iter(results.values()))["rows"]
    if categories:  # mean alpha MSE per category (SOURCES*.md of the mattes folder; unlisted subjects: "other")
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows0):
            groups.setdefault(categories.get(row["subject"], "other"), []).append(i)
        lines += ["", "| category | n | " + " | ".join(f"{n} MSE" for n in names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for cat, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            lines.append(f"| {cat} | {len(idx)} | " + " | ".join(
                f"{np.mean([results[n]['rows'][i]['MSE'] for i in idx]):.3f}" for n in names) + " |")
    if per_subject:
        lines += ["", "| subject | " + " | ".join(f"{n} MSE" for n in names) + " |", "|---|" + "---:|" * len(names)]
        for i, row in enumerate(next(iter(results.values()))["rows"]):
            lines.append(f"| {row['subject']} | " + " | ".join(f"{results[n]['rows'][i]['MSE']:.3f}" for n in names) + " |")
    return "\n".join(lines)


def frame_4k() -> str:
    """Key one synthetic 3840x2160 frame with the default mode; report time and peak resident memory."""
    import resource

    import torch

    from diffumatting.greenpost import green_post

    h, w = 2160, 3840
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = np.clip(1.0 - (np.hypot(xx - w / 2, yy - h / 2) - 700) / 40, 0, 1).astype(np.float32)
    fg = np.stack([0.8 * np.ones_like(a), 0.3 + 0.2 * (xx / w), 0.2 * np.ones_like(a)], -1)
    img = synth_shot("frame4k", fg, a, "real")
    del yy, xx
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = green_post(torch.from_numpy(img).permute(2, 0, 1)[None])
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    err = metrics.mse(res.alpha[0, 0].numpy(), a)
    return (f"4K frame (3840x2160, real variant): {dt:.2f} s ({dt / (h * w / 1e6):.3f} s/MP), alpha MSE x1e3 {err:.3f}, "
            f"peak RSS {peak:.0f} MiB (before keying {before:.0f} MiB), finite: {bool(torch.isfinite(res.alpha).all())}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DIFFUMATTING_MATTES", DEFAULT_DATA)))
    ap.add_argument("--variant", choices=["clean", "real", "both"], default="both")
    ap.add_argument("--methods", default="greenpost,greenpost_hq,baseline,pymatting")
    ap.add_argument("--keyer", default="",
                    help="method 'learned': comma-separated image-only keyer files (train-head --image-only); each "
                    "subject is keyed by the first one that did not train on it (one file per --fold: cross-"
                    "validation; the shipped weights/diffumatting_keyer.safetensors on unseen mattes)")
    ap.add_argument("--side-head", default="",
                    help="method 'side' (the side-decoder question of issue 15): comma-separated decoder-taps heads "
                    "trained with train-head --taesd DIR --head-image original, one per --fold; each subject by the "
                    "first that did not train on it")
    ap.add_argument("--taesd", type=Path, default=REPO.parent / "shared" / "data" / "models" / "taef2",
                    help="method 'side': the tiny decoder the --side-head files were trained with (default TAEF2)")
    ap.add_argument("--max-side", type=int, default=0, metavar="PX",
                    help="downscale subjects larger than this (long side, area filter) before compositing: a cheaper "
                    "run (e.g. method 'side', whose tiny decoder costs about a minute per megapixel on a CPU)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N subjects")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs on each of the first 5 subjects")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (numpy baselines are single-threaded)")
    ap.add_argument("--tune-baseline", action="store_true", help="grid-search the baseline's black/white points")
    ap.add_argument("--per-subject", action="store_true", help="also print per-subject MSE")
    ap.add_argument("--frame-4k", action="store_true", help="also key one 3840x2160 frame")
    ap.add_argument("--user-path", action="store_true",
                    help="the user-path mode (bench/keying_userpath.py): distinct images keyed once each in fresh "
                    "processes, default/1/2/all threads, quiet and beside a CPU hog, in-process and via the CLI")
    ap.add_argument("--comfyui", default="", help="with --user-path: also time the GreenPost node in this ComfyUI")
    ap.add_argument("--frames", type=int, default=120, help="with --comfyui: 1280x720 frames in the node's batch")
    ap.add_argument("--_child", dest="child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_node-child", dest="node_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_method", dest="child_method", default="greenpost", help=argparse.SUPPRESS)
    ap.add_argument("--_threads", dest="child_threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_dir", dest="child_dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child or args.node_child:
        import keying_userpath

        return keying_userpath._child(args) if args.child else keying_userpath._node_child(args)

    import torch

    if not args.user_path:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"error: no mattes folder at {args.data} (pass --data)", file=sys.stderr)
        return 2
    subjects = load_subjects(args.data, args.limit, args.max_side)
    if args.user_path:
        import keying_userpath

        return keying_userpath.run(subjects, args)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    keyers = None
    if "learned" in names:
        paths = [p for p in args.keyer.split(",") if p] or [str(REPO / "weights" / "diffumatting_keyer.safetensors")]
        keyers = HeldOutModels(paths, "--keyer", image_only=True)
    sides = None
    if "side" in names:
        if not args.side_head:
            raise SystemExit("method 'side' needs --side-head (train-head --taesd DIR --head-image original, one "
                             "file per --fold)")
        sides = HeldOutModels([p for p in args.side_head.split(",") if p], "--side-head", image_only=False)
    bp = dict(BASELINE_PARAMS)
    if args.tune_baseline:
        bp["tune"] = True
    variants = ["clean", "real"] if args.variant == "both" else [args.variant]
    tables = []
    # every variant's torch / numpy methods first, the pymatting baseline (numba threads slow torch) after them
    slow = [n for n in names if n == "pymatting"]
    fast = [n for n in names if n not in slow]
    results = {v: {} for v in variants}
    for group in (fast, slow):
        for v in variants:
            if group:
                results[v].update(run_variant(subjects, v, group, bp, args.repeats, args.per_subject, keyers, sides,
                                              str(args.taesd)))
    categories = subject_categories(args.data)
    for v in variants:
        tables.append(format_table(v, {n: results[v][n] for n in names}, args.per_subject, categories))
    print()
    scaled = f", subjects downscaled to at most {args.max_side} px" if args.max_side else ""
    print(f"Keying benchmark on {args.data} ({len(subjects)} subjects{scaled}), torch threads {args.threads}")
    for t in tables:
        print()
        print(t)
    if args.frame_4k:
        print()
        print(frame_4k())
    return 0


if __name__ == "__main__":
    sys.exit(main())
