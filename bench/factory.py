"""Benchmark: data-factory throughput, in-process against Ray workers, same machine, same run.

Runs the real command (``python -m diffumatting generate``) on the pack's data-factory workflow with the test
harness's tiny random-weight SD1.5 models (64 px, 1 step by default) in three ways, one after the other:

* ``in-process``: ``--workers 1`` (no Ray), with the same thread count as one Ray worker (``OMP_NUM_THREADS``);
* ``ray x1``: one Ray worker (``--ray ADDRESS --workers 1``) on a Ray cluster this script starts once;
* ``ray xN``: ``N`` Ray workers on that cluster.

For each it polls ``metadata.jsonl`` and prints the time to the first committed sample (start-up: Python, Ray,
ComfyUI boot, models), the steady rate between the first and the last commit (samples per second), seconds per
sample, and the ratios: N workers against one, and the per-sample overhead of the Ray path (prepare + transfer +
commit on the driver) against the in-process path. CPU workers by default; ``--gpu`` runs the workers on GPUs
(``--gpus-per-worker``, e.g. 0.5 to put two workers on one GPU).

    COMFYUI_PATH=/work/comfyui .venv/bin/python bench/factory.py             # 2 workers, 8 samples per run
    ... --workers 4 --count 16 --gpu --gpus-per-worker 1 --size 512 --steps 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _test_module():
    """The Ray integration test's tiny-model workflow and node pack (one definition for the test and this bench)."""
    spec = importlib.util.spec_from_file_location("_dm_factory_test", REPO_ROOT / "tests" / "integration" /
                                                  "test_factory_ray.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(work: Path, comfyui: str, args) -> tuple[list[str], dict]:
    """Files of the runs in ``work`` -> (the command without --out/--workers/--ray, environment)."""
    test = _test_module()
    models = work / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "tiny.safetensors").write_bytes(b"")  # named by --checkpoint; the models come from DMTestTinyModels
    (work / "extra_model_paths.yaml").write_text(f"bench:\n  base_path: {work / 'models'}\n  checkpoints: checkpoints\n")
    pack = work / "dm_factory_test_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(test.TEST_PACK)
    (work / "workflow.json").write_text(json.dumps(test.tiny_workflow()))
    (work / "prompts.txt").write_text("\n".join(test.PROMPTS) + "\n")
    command = [sys.executable, "-m", "diffumatting", "generate", "--comfyui", comfyui, "--checkpoint",
               "tiny.safetensors", "--prompts", str(work / "prompts.txt"), "--count", str(args.count),
               "--workflow", str(work / "workflow.json"), "--steps", str(args.steps), "--size", str(args.size),
               "--extra-model-paths", str(work / "extra_model_paths.yaml"), "--custom-nodes", str(pack)]
    if not args.gpu:
        command.append("--cpu")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(work / "rt")}
    (work / "rt").mkdir()
    return command, env


def timed_run(command: list[str], env: dict, out: Path, count: int, timeout: float) -> dict:
    """Run one command, polling its data set -> start-up seconds, steady samples/s, seconds per sample."""
    t0 = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "wb") as f:
        proc = subprocess.Popen([*command, "--out", str(out)], env=env, stdout=f, stderr=subprocess.STDOUT,
                                cwd=out.parent)
    commits: list[float] = []  # time of the k-th commit
    meta = out / "metadata.jsonl"
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"timed out; log: {log}")
        n = len(meta.read_bytes().splitlines()) if meta.exists() else 0
        now = time.perf_counter() - t0
        commits.extend([now] * (n - len(commits)))
        time.sleep(0.05)
    n = len(meta.read_bytes().splitlines()) if meta.exists() else 0
    commits.extend([time.perf_counter() - t0] * (n - len(commits)))
    if proc.returncode != 0 or n != count:
        raise SystemExit(f"the run failed ({proc.returncode}, {n} of {count} samples); log: {log}\n"
                         + log.read_text(errors="replace")[-3000:])
    span = commits[-1] - commits[0]
    rate = (len(commits) - 1) / span if span > 0 else float("nan")
    return {"startup": commits[0], "total": time.perf_counter() - t0, "rate": rate, "per_sample": 1 / rate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""), help="ComfyUI checkout (COMFYUI_PATH)")
    p.add_argument("--workers", type=int, default=2, help="workers of the largest Ray run (default 2)")
    p.add_argument("--count", type=int, default=8, help="samples per run (default 8)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", action="store_true", help="GPU workers (default: CPU workers)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    args = p.parse_args(argv)
    if not args.comfyui:
        p.error("--comfyui (or COMFYUI_PATH) is needed")
    import ray

    work = Path(tempfile.mkdtemp(prefix="dmbench-"))
    try:
        command, env = prepare(work, args.comfyui, args)
        threads = str(max(1, int(args.cpus_per_worker)))
        res = {}
        print(f"in-process ({threads} thread(s)) ...", flush=True)
        res["in-process"] = timed_run([*command, "--workers", "1"], {**env, "OMP_NUM_THREADS": threads},
                                      work / "inproc", args.count, args.timeout)
        os.environ.update({k: env[k] for k in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_TMPDIR")})
        ray.init(num_cpus=max(os.cpu_count() or 1, int(args.workers * args.cpus_per_worker + 0.999)),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            address = ray.get_runtime_context().gcs_address
            ray_args = ["--ray", address, "--cpus-per-worker", str(args.cpus_per_worker)]
            if args.gpu:
                ray_args += ["--gpus-per-worker", str(args.gpus_per_worker)]
            for n in sorted({1, args.workers}):
                print(f"ray x{n} ...", flush=True)
                res[f"ray x{n}"] = timed_run([*command, *ray_args, "--workers", str(n)], env, work / f"ray{n}",
                                             args.count, args.timeout)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    device = "GPU" if args.gpu else "CPU"
    print(f"\ndata factory, tiny SD1.5 test models, {args.size} px, {args.steps} step(s), {args.count} samples per run, "
          f"{device} workers, {args.cpus_per_worker:g} CPU each, {os.cpu_count()} cores on this machine")
    print(f"| run | start-up to 1st sample (s) | total (s) | steady samples/s | s/sample |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['startup']:.1f} | {r['total']:.1f} | {r['rate']:.3f} | {r['per_sample']:.2f} |")
    base, one, many = res["in-process"], res["ray x1"], res[f"ray x{args.workers}"]
    print(f"\nray x{args.workers} / ray x1 throughput: {many['rate'] / one['rate']:.2f}x "
          f"(ideal {args.workers}x on {args.workers} free devices)")
    print(f"ray x{args.workers} / in-process throughput: {many['rate'] / base['rate']:.2f}x")
    print(f"per-sample overhead of the Ray path (ray x1 - in-process, same threads): "
          f"{one['per_sample'] - base['per_sample']:+.2f} s ({one['per_sample'] / base['per_sample']:.2f}x)")
    print(f"extra start-up of the Ray path: {one['startup'] - base['startup']:+.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
