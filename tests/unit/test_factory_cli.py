"""`generate` end to end without ComfyUI or Ray: ComfyUI's boot is replaced by a fake runner that does what the
workflow's SaveMattingDataset node does (write one sample through `open_writer` of its folder), so the command's
plan, capture-and-commit, resume, failure records, fatal errors, Ctrl-C and option checks are exercised for real."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from diffumatting.cli import main
from diffumatting.dataset import FOLDERS, MattingDatasetWriter, open_writer
from diffumatting.factory import comfy_worker

GREEN = torch.tensor([0.0, 1.0, 0.0])
NODE = "DiffuMattingSaveMattingDataset"


class Refused(Exception):
    kind = "validation"  # what comfy_bootstrap.PromptError says for a workflow ComfyUI will not run


class FakeComfy:
    """Stands in for comfy_worker.boot: ``runner.run(prompt)`` writes the prompt's sample like the node would."""

    def __init__(self, tmp: Path, fail=(), refuse=False, interrupt_at=None):
        self.root = tmp / "worker_output"
        self.fail, self.refuse, self.interrupt_at = set(fail), refuse, interrupt_at
        self.boots, self.runs = 0, []

    def boot(self, comfyui, *, cpu, workdir=None, extra_model_paths=None, custom_nodes=(), checkpoint=None):
        self.boots += 1
        return types.SimpleNamespace(runner=types.SimpleNamespace(run=self.run), root=str(self.root), temp=None,
                                     workdir=str(self.root), device="cpu (fake)")

    def run(self, prompt):
        node = next(n["inputs"] for n in prompt.values() if n["class_type"] == NODE)
        self.runs.append(node["name"])
        if self.interrupt_at is not None and len(self.runs) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.refuse:
            raise Refused("the workflow is not valid here: Cannot execute because a node is missing")
        if node["name"] in self.fail:
            raise RuntimeError(f"the workflow failed in KSampler: CUDA out of memory ({node['name']})")
        alpha = torch.zeros(1, 32, 32)
        alpha[:, 8:24, 8:24] = 1.0
        fg = torch.tensor([0.8, 0.3, (node["seed"] % 10) / 10]).reshape(3, 1, 1).expand(3, 32, 32).clone()
        writer = open_writer(self.root / node["folder"])
        try:
            writer.write(node["name"], alpha * fg + (1 - alpha) * GREEN.reshape(3, 1, 1), fg, alpha, GREEN,
                         caption=node["prompt"], meta={"prompt": node["prompt"], "seed": node["seed"],
                                                       "model": node["model"]})
        finally:
            writer.close()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "comfy").mkdir(parents=True)
    (comfyui / "comfy" / "model_management.py").write_text("")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\n# comment\na blue mug\n")
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({"1": {"class_type": NODE, "inputs": {"prompt": "", "seed": 0, "model": ""}}}))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails: the one-process path must not need it

    def run(out, *extra, fake=None):
        fake = fake or FakeComfy(tmp_path)
        monkeypatch.setattr(comfy_worker, "boot", fake.boot)
        rc = main(["generate", "--comfyui", str(comfyui), "--checkpoint", "m.safetensors", "--prompts", str(prompts),
                   "--out", str(out), "--workflow", str(workflow), "--seed", "10", *extra])
        return rc, fake

    return types.SimpleNamespace(run=run, tmp=tmp_path)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_against_plan(out: Path, committed: list[int], failed: list[int] = ()) -> None:
    """Every planned index committed or failed exactly once, files complete, nothing staged or pending."""
    rows = _rows(out / "metadata.jsonl")
    assert [r["name"] for r in rows] == [f"gen_{i:06d}" for i in committed]
    for r, i in zip(rows, committed):
        assert r["prompt"] == ["a red apple", "a blue mug"][i % 2] and r["seed"] == 10 + i
    for folder in FOLDERS:
        assert sorted(p.stem for p in (out / folder).iterdir()) == sorted(r["name"] for r in rows)
    assert [r["name"] for r in _rows(out / "failed.jsonl")] == [f"gen_{i:06d}" for i in failed]
    for scratch in (".pending", ".staging"):
        assert not (out / scratch).exists() or not any((out / scratch).iterdir()), scratch


def test_one_worker_runs_the_plan_without_ray_and_resumes(setup, capsys):
    out = setup.tmp / "ds"
    rc, fake = setup.run(out, "--count", "2")
    assert rc == 0 and fake.boots == 1 and fake.runs == ["gen_000000", "gen_000001"]
    _check_against_plan(out, [0, 1])
    assert not (setup.tmp / "worker_output").exists() or not any((setup.tmp / "worker_output").rglob("*.png"))
    rc, fake = setup.run(out, "--count", "3")
    assert rc == 0 and fake.runs == ["gen_000002"]  # resumed: nothing redone
    _check_against_plan(out, [0, 1, 2])
    rc, fake = setup.run(out, "--count", "3")
    assert rc == 0 and fake.boots == 0  # nothing to do: ComfyUI is not even started
    assert "0 generated in this run" in capsys.readouterr().out


def test_a_sample_that_keeps_failing_is_recorded_once_and_skipped_then_retried_on_request(setup, capsys):
    out = setup.tmp / "ds"
    rc, fake = setup.run(out, "--count", "3", "--max-tries", "2", fake=FakeComfy(setup.tmp, fail={"gen_000001"}))
    assert rc == 0 and fake.runs == ["gen_000000", "gen_000001", "gen_000001", "gen_000002", "gen_000003"]
    _check_against_plan(out, [0, 2, 3], failed=[1])
    row = _rows(out / "failed.jsonl")[0]
    assert row["attempts"] == 2 and row["seed"] == 11 and row["prompt"] == "a blue mug"
    assert row["reason"] == "the workflow failed in KSampler: CUDA out of memory (gen_000001)"
    assert "1 failed (failed.jsonl)" in capsys.readouterr().out
    assert json.loads((out / "stats.json").read_text())["counts"]["failed"] == 1
    rc, fake = setup.run(out, "--count", "4", fake=FakeComfy(setup.tmp, fail={"gen_000001"}))
    assert fake.runs == ["gen_000004"]  # resume skips the failed sample
    rc, fake = setup.run(out, "--count", "5", "--retry-failed")
    assert rc == 0 and fake.runs == ["gen_000001"]
    _check_against_plan(out, [0, 2, 3, 4, 1])


def test_a_workflow_comfyui_refuses_stops_the_run_and_records_nothing(setup, capsys):
    out = setup.tmp / "ds"
    rc, fake = setup.run(out, "--count", "3", fake=FakeComfy(setup.tmp, refuse=True))
    err = capsys.readouterr().err
    assert rc == 2 and fake.runs == ["gen_000000"]
    assert "error: worker 0 (in this process, cpu (fake)): the workflow is not valid here" in err
    assert "Traceback" not in err
    assert not out.exists()  # created by this run, and nothing in it: removed


def test_ctrl_c_stops_cleanly_and_the_rerun_completes(setup, capsys):
    out = setup.tmp / "ds"
    rc, _ = setup.run(out, "--count", "4", fake=FakeComfy(setup.tmp, interrupt_at=3))
    err = capsys.readouterr().err
    assert rc == 130 and "stopped; 2 accepted" in err and "interrupted" in err and "Traceback" not in err
    _check_against_plan(out, [0, 1])
    with MattingDatasetWriter(out):  # the folder was released
        pass
    rc, fake = setup.run(out, "--count", "4")
    assert rc == 0 and fake.runs == ["gen_000002", "gen_000003"]
    _check_against_plan(out, [0, 1, 2, 3])


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers: expected a whole number >= 1 or 'auto', got '0'"),
    (["--workers", "two"], "--workers: expected a whole number >= 1 or 'auto'"),
    (["--workers", "2", "--gpus-per-worker", "-1"], "--gpus-per-worker: expected a number >= 0"),
    (["--workers", "2", "--cpus-per-worker", "0"], "--cpus-per-worker: expected a number > 0"),
    (["--max-tries", "0"], "--max-tries: expected at least 1"),
    (["--worker-restarts", "-1"], "--worker-restarts: expected a whole number >= 0"),
    (["--workers", "2", "--cpu"], "--workers 2 needs Ray, which is not installed in this Python: "
                                  "pip install -r requirements-ray.txt"),
    (["--custom-nodes", "/no/such/pack"], "--custom-nodes: no such file or folder /no/such/pack"),
])
def test_bad_options_are_one_line_errors_and_leave_no_folder(setup, capsys, args, message):
    out = setup.tmp / "ds"
    rc, fake = setup.run(out, "--count", "1", *args)
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {message}" in err and "Traceback" not in err
    assert fake.boots == 0 and not out.exists()


HOLD = ("import sys\nfrom diffumatting.dataset import MattingDatasetWriter\nw = MattingDatasetWriter(sys.argv[1])\n"
        "print('ready', flush=True)\nsys.stdin.read()\n")


def test_a_second_writer_on_the_folder_is_refused(setup, capsys):
    out = setup.tmp / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        rc, fake = setup.run(out, "--count", "1", "--workers", "2", "--cpu")
        err = capsys.readouterr().err
        assert rc == 2 and "is being written by another writer (pid" in err and fake.boots == 0
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
