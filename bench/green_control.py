"""Benchmark: sampling time per step with and without the GreenControl patch, same model, same run.

Runs ComfyUI in-process on CPU (``COMFYUI_PATH`` or ``--comfyui``) with random-weight models built by the test
harness's builders (tiny SD1.5, and the full-size SD1.5 architecture), samples the same latent with the plain
and the patched model, interleaved (A B A B ...) so drift from other jobs on the machine cancels, and prints the
seconds per step of each (process CPU time, min and median; wall median) and the overhead ratios. It also times
the patch's own code (recorder + post-CFG anchoring) inside the patched runs, as a share of the step: that
number cannot be disturbed by drift between runs.

    COMFYUI_PATH=/work/comfyui nice -n 10 /work/comfyui/.venv/bin/python bench/green_control.py
    ... --models tiny --steps 2 --tiny-repeats 3      # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def bootstrap(comfyui: Path):
    """ComfyUI (CPU) through the pack's one bootstrap; -> (the pack's green-control node module, the test harness)."""
    from diffumatting.comfy_bootstrap import ComfyUIError, import_comfy

    try:
        import_comfy(comfyui, cpu=True, what="--comfyui")
    except ComfyUIError as exc:
        sys.exit(str(exc))
    from diffumatting.nodes import green_control as gc

    spec = importlib.util.spec_from_file_location("_dm_harness", REPO_ROOT / "tests" / "integration" / "conftest.py")
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return gc, harness


def build(harness, which: str):
    if which == "tiny":
        return harness.build_models("sd15", harness.TINY_UNET["sd15"], harness.TINY_VAE_DDCONFIG,
                                    harness.TINY_TEXT_ENCODER, seed=11)[:3]
    if which == "sd15":
        return harness.build_models("sd15", harness.FULL_SD15_UNET, harness.FULL_VAE_DDCONFIG, None, seed=5)[:3]
    raise SystemExit(f"--models: unknown model {which!r} (tiny, sd15)")


def time_run(sample, model, steps, pos, neg, latent, noise) -> tuple[float, float]:
    """-> (wall seconds per step, process CPU seconds per step): CPU time is the steadier one on a shared box."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = sample(model, noise, steps, 7.0, "euler", "normal", pos, neg, latent, disable_pbar=True, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert out.isfinite().all()
    return wall / steps, cpu / steps


def instrument(gc) -> dict:
    """Accumulate the wall time spent in the patch's recorder and post-CFG anchoring into the returned dict."""
    acc = {"s": 0.0}
    for name in ("record", "anchor"):
        original = getattr(gc.RunState, name)

        def timed(self, *args, _f=original, **kwargs):
            t0 = time.perf_counter()
            try:
                return _f(self, *args, **kwargs)
            finally:
                acc["s"] += time.perf_counter() - t0

        setattr(gc.RunState, name, timed)
    return acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(REPO_ROOT.parent / "comfyui")))
    p.add_argument("--models", default="tiny,sd15", help="comma list of: tiny, sd15 (full size)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (square)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant (interleaved), full size")
    p.add_argument("--tiny-repeats", type=int, default=9, help="timed runs per variant for the tiny model")
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args(argv)

    gc, harness = bootstrap(Path(a.comfyui).resolve())
    import comfy.sample
    import torch

    torch.manual_seed(0)
    inside = instrument(gc)
    rows = []
    for which in [m.strip() for m in a.models.split(",") if m.strip()]:
        model, clip, vae = build(harness, which)
        res = gc.apply_green_control(
            model, clip, vae, "a red apple", "", "green", 0.8, 1.0, gc.DEFAULT_SUFFIX, gc.DEFAULT_NEGATIVE_SUFFIX,
            0.3, 0.3, 0.0)
        patched, pos, neg = res.model, res.positive, res.negative
        runs = gc.attach_run_log(patched)  # each patched run appends its own RunState
        latent = torch.zeros(a.batch, 4, a.size // 8, a.size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        variants = {"plain": model, "patched": patched}
        times = {k: [] for k in variants}
        for k, m in variants.items():  # warm-up: model load, allocator
            time_run(comfy.sample.sample, m, 1, pos, neg, latent, noise)
        reps = a.tiny_repeats if which == "tiny" else a.repeats
        shares = []
        for _ in range(reps):
            for k, m in variants.items():
                inside["s"] = 0.0
                times[k].append(time_run(comfy.sample.sample, m, a.steps, pos, neg, latent, noise))
                if k == "patched":  # wall time spent inside the patch's own code, as a share of the step
                    shares.append(inside["s"] / a.steps / times[k][-1][0])
        if not runs.runs or any(r.anchored == 0 for r in runs.runs):
            raise SystemExit("the patched runs never anchored: the benchmark would not measure the patch")
        stats = {k: {"wall_med": statistics.median(t[0] for t in v), "cpu_med": statistics.median(t[1] for t in v),
                     "cpu_min": min(t[1] for t in v)} for k, v in times.items()}
        rows.append((which, stats["plain"], stats["patched"], reps, statistics.median(shares)))
        for k, v in times.items():
            print(f"[{which}] {k:7s} wall s/step {[round(t[0], 3) for t in v]}  cpu s/step "
                  f"{[round(t[1], 3) for t in v]}", flush=True)
        del model, clip, vae, patched, res, runs

    print()
    print(f"GreenControl overhead, {a.size}x{a.size} px, batch {a.batch}, euler, cfg 7, {a.steps} steps per run, "
          f"plain/patched runs interleaved (CPU, {torch.get_num_threads()} threads)")
    print("| model | runs | plain CPU s/step (min / median) | patched CPU s/step (min / median) | overhead, min CPU "
          "| overhead, median CPU | overhead, median wall | time inside the patch (median share of a step) |")
    print("|---|---|---|---|---|---|---|---|")
    for which, pl, pa, reps, share in rows:
        def pct(key):
            return f"{100 * (pa[key] / pl[key] - 1):+.1f} %"

        print(f"| {which} | {reps} | {pl['cpu_min']:.3f} / {pl['cpu_med']:.3f} | {pa['cpu_min']:.3f} / "
              f"{pa['cpu_med']:.3f} | {pct('cpu_min')} | {pct('cpu_med')} | {pct('wall_med')} | {100 * share:.1f} % |")
    print("(CPU = process CPU time per step; the minimum is the least-disturbed run on a shared machine. The last "
          "column times the recorder + post-CFG code inside the patched runs themselves, so drift between runs "
          "cannot enter it.)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
