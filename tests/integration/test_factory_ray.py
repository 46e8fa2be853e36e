"""The data factory on Ray workers, for real: `generate --ray ADDRESS` and `generate --workers 2` (CPU workers, each
booting ComfyUI with the pack and the tiny test models) against the one-process run.

One run, in the order a user would live it: the one-process reference; a 2-worker run on a Ray cluster during which
a second `generate` and a `dataset` on the same folder are refused, one worker is killed with SIGKILL (its sample is
re-queued and made by the other) and then the driver itself is killed with SIGKILL; the same command with
`--workers 2` (a local cluster) resumes and completes. The data set is then checked
against the plan (every planned sample once, in plan order, nothing partial, staged or left over) and against the
reference (same names, prompts, seeds, metadata; images within 1/255-level differences of thread counts). (That a
rerun with nothing left to do starts neither Ray nor ComfyUI is checked in tests/unit/test_factory_cli.py.)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffumatting.cli.commands import generate
from diffumatting.dataset import FOLDERS
from diffumatting.dataset.lock import read_holder

ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install -r requirements-ray.txt")

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "api" / "09_data_factory.json"
CONFTEST = Path(__file__).resolve().parent / "conftest.py"
COUNT, SEED = 6, 40
PROMPTS = ["a red apple", "a blue mug", "a knitted hat"]
# 8-bit files of the same sample made with other thread counts (Ray gives each CPU worker one thread) differ by
# float rounding only: a few pixels one level apart.
MAX_LEVEL_DIFF, MAX_MEAN_DIFF, SCORE_TOL = 2 / 255, 0.05 / 255, 1e-4

# The test models as a ComfyUI node pack, so that Ray workers (fresh processes booting ComfyUI) have them too: the
# same conftest code and seeds as the DMTestTinyModels node of this process, so both make identical weights.
TEST_PACK = f'''
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("dm_factory_test_conftest", {str(CONFTEST)!r})
_conftest = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _conftest
_spec.loader.exec_module(_conftest)


class DMTestTinyModels:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"family": (["sd15", "sdxl"], {{"tooltip": "tiny test model family"}})}}}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CONTROL_NET")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, family):
        m = _conftest.tiny_models(family)
        return (m.model, m.clip, m.vae, m.controlnet)


NODE_CLASS_MAPPINGS = {{"DMTestTinyModels": DMTestTinyModels}}
'''


def tiny_workflow() -> dict:
    """The shipped data-factory workflow on the tiny test models, gate off (random weights paint noise)."""
    wf = generate.load_workflow(str(WORKFLOW))
    wf["1"] = {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}}
    next(n for n in wf.values() if n["class_type"] == generate.DATASET_NODE)["inputs"]["quality_gate"] = False
    return wf


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(predicate, timeout: float, proc=None, log: Path | None = None, what: str = ""):
    """Poll ``predicate`` until truthy (-> its value); fail with the driver's log tail on timeout or early exit."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{_tail(log)}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace").replace("\r", "\n")[-4000:] if log and log.exists() else ""


def _our_processes(ray_tmp: Path) -> list[int]:
    """Live processes started with RAY_TMPDIR=ray_tmp (a driver's Ray cluster and its workers), not this one."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker in env.split(b"\0") and state != "Z":
            pids.append(int(entry))
    return pids


def _reap(ray_tmp: Path, grace: float = 30.0) -> list[str]:
    """Wait for the processes of that Ray temp folder to end; kill (by pid) those that did not -> their pid and
    command line."""
    end = time.monotonic() + grace
    while _our_processes(ray_tmp) and time.monotonic() < end:
        time.sleep(0.3)
    left = []
    for pid in _our_processes(ray_tmp):
        try:
            left.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ')[:200]!r}")
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
    return left


@pytest.fixture
def factory_setup(comfy, tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    # `--checkpoint` must name a file of the workers' checkpoints folder; the workflow takes its models from
    # DMTestTinyModels, so the file itself is never read.
    (models / "checkpoints" / "tiny.safetensors").write_bytes(b"")
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text(f"factory_test:\n  base_path: {models}\n  checkpoints: checkpoints\n")
    pack = tmp_path / "dm_factory_test_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text(TEST_PACK)
    workflow = tmp_path / "tiny_factory.json"
    workflow.write_text(json.dumps(tiny_workflow()))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "ds"

    def command(*extra):
        return [sys.executable, "-m", "diffumatting", "generate", "--comfyui", str(comfy.root), "--checkpoint",
                "tiny.safetensors", "--prompts", str(prompts), "--count", str(COUNT), "--seed", str(SEED), "--out",
                str(out), "--workflow", str(workflow), "--steps", "1", "--size", "64", "--cpu",
                "--extra-model-paths", str(yaml_path), "--custom-nodes", str(pack), *extra]

    def env(ray_tmp: Path) -> dict:
        """Ray's folder, and (TMPDIR) the one where the workers make their private ComfyUI folders."""
        ray_tmp.mkdir(exist_ok=True)
        (tmp_path / f"tmp_{ray_tmp.name}").mkdir(exist_ok=True)
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(tmp_path / f"tmp_{ray_tmp.name}"), "PYTHONUNBUFFERED": "1"}

    return out, command, env


def _reference(comfy) -> Path:
    """The one-process run (the `--workers 1` path: run_factory in this process's ComfyUI) of the same plan."""
    from diffumatting.comfy_bootstrap import PromptRunner

    runner = PromptRunner(comfy)
    ref = Path(comfy.folder_paths.get_output_directory()) / "factory_ray_reference"
    counts = generate.run_factory(runner.run, tiny_workflow(), PROMPTS, COUNT, str(ref), ref.name,
                                  checkpoint="tiny.safetensors", seed=SEED, steps=1, size=64, progress=False)
    assert counts["accepted"] == COUNT and counts["ran_now"] == COUNT
    return ref


def test_two_ray_workers_survive_kills_and_make_the_one_process_data_set(comfy, tiny_sd15, factory_setup, tmp_path,
                                                                         monkeypatch):
    out, command, env = factory_setup
    ref = _reference(comfy)
    plan = [f"gen_{i:06d}" for i in range(COUNT)]

    # -- run 1: two workers on an existing Ray cluster (owned by this test) ----------------------------------
    ray_tmp = tmp_path.parent / "rt1"  # short: Ray's socket paths under it must stay below 108 characters
    run_env = env(ray_tmp)
    for key in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE", "RAY_TMPDIR", "TMPDIR"):
        monkeypatch.setenv(key, run_env[key])
    log1 = tmp_path / "run1.log"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        with open(log1, "wb") as f:
            driver = subprocess.Popen(command("--ray", address, "--workers", "2"), cwd=tmp_path, env=run_env,
                                      stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: (read_holder(str(out)) or {}).get("pid") == driver.pid, 120, driver, log1,
                  "the driver to take the data-set folder")
            # a second writer of the folder, of either kind, is refused at once with a clear error
            seconds = [subprocess.Popen(cmd, cwd=tmp_path, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
                       for cmd in (command("--workers", "1"),
                                   [sys.executable, "-m", "diffumatting", "dataset",
                                    str(REPO / "assets" / "demo_greenscreen.png"), "--out", str(out)])]
            for proc in seconds:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 2, err[-2000:]
                assert f"is being written by another writer (pid {driver.pid}" in err and "Traceback" not in err
            pids = _wait(lambda: dict(re.findall(r"worker (\d): ready \(pid (\d+)", log1.read_text(errors="replace")))
                         if len(re.findall(r"worker \d: ready", log1.read_text(errors="replace"))) >= 2 else None,
                         300, driver, log1, "both workers to boot")
            _wait(lambda: _rows(out / "metadata.jsonl"), 300, driver, log1, "the first committed sample")
            os.kill(int(pids["1"]), signal.SIGKILL)  # a worker dies mid-run
            requeued = _wait(lambda: re.findall(r"worker 1: died running (gen_\d+)", log1.read_text(errors="replace")),
                             120, driver, log1, "the driver to notice the dead worker")[0]
            _wait(lambda: f"{requeued}: re-queued (attempt 2 of 3)" in log1.read_text(errors="replace"), 30, driver,
                  log1, f"{requeued} to be re-queued")
            _wait(lambda: requeued in {r["name"] for r in _rows(out / "metadata.jsonl")}, 300, driver, log1,
                  f"{requeued} to be made by another worker")
            os.kill(driver.pid, signal.SIGKILL)  # ... and then the driver
            driver.wait(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=60)
        names = [r["name"] for r in _rows(out / "metadata.jsonl")]
        assert names == plan[:len(names)] and len(names) < COUNT, (names, _tail(log1))  # in plan order; work left
    finally:
        ray.shutdown()
    left = _reap(ray_tmp)
    assert not left, f"processes of the Ray cluster were left running: {left}"

    # -- run 2: the same plan with --workers 2 (a local Ray cluster started by the command) resumes -------------
    local_tmp = tmp_path.parent / "rt2"
    proc = subprocess.run(command("--workers", "2"), cwd=tmp_path, env=env(local_tmp), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"{COUNT} accepted, 0 rejected; {COUNT - len(names)} generated in this run" in proc.stdout
    assert "worker 0: ready" in proc.stderr and "worker 1: ready" in proc.stderr
    left = _reap(local_tmp)
    assert not left, f"the command left processes of its Ray cluster running: {left}"
    # the workers removed their private ComfyUI folders when the run ended
    assert not list((tmp_path / f"tmp_{local_tmp.name}").glob("diffumatting-worker-*"))

    _check_against_plan(out, plan)
    _check_equal_to_reference(out, ref)


def _check_against_plan(out: Path, plan: list[str]) -> None:
    rows = _rows(out / "metadata.jsonl")
    assert [r["name"] for r in rows] == plan  # every planned sample once, in plan order, none lost or duplicated
    for i, row in enumerate(rows):
        assert row["prompt"] == PROMPTS[i % len(PROMPTS)] and row["seed"] == SEED + i
        assert row["model"] == "tiny.safetensors" and row["caption"] == row["prompt"]
    assert not (out / "rejected.jsonl").exists() and not (out / "failed.jsonl").exists()
    expected = {f"{folder}/{name}.{'txt' if folder == 'caption' else 'png'}" for folder in FOLDERS for name in plan}
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == expected | {"metadata.jsonl", "stats.json", ".lock"}  # nothing partial, staged or left over
    assert json.loads((out / "stats.json").read_text())["counts"] == {"accepted": COUNT, "rejected": 0}


def _check_equal_to_reference(out: Path, ref: Path) -> None:
    from diffumatting.common.images import load_image

    rows, ref_rows = _rows(out / "metadata.jsonl"), _rows(ref / "metadata.jsonl")
    assert [r["name"] for r in rows] == [r["name"] for r in ref_rows]
    for row, want in zip(rows, ref_rows):
        assert {k: v for k, v in row.items() if k != "scores"} == {k: v for k, v in want.items() if k != "scores"}
        assert row["scores"] == pytest.approx(want["scores"], abs=SCORE_TOL)
        assert (out / row["files"]["caption"]).read_bytes() == (ref / want["files"]["caption"]).read_bytes()
        for kind in ("image", "fg", "alpha", "trimap"):
            a, b = (load_image(root / r["files"][kind]).rgb for root, r in ((out, row), (ref, want)))
            diff = (a - b).abs()
            assert float(diff.max()) <= MAX_LEVEL_DIFF + 1e-6, (row["name"], kind, float(diff.max()) * 255)
            assert float(diff.mean()) <= MAX_MEAN_DIFF, (row["name"], kind, float(diff.mean()) * 255)
