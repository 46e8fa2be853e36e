"""The data factory (`python -m diffumatting generate`) on a real ComfyUI: runs the pack's workflow in-process,
writes the data set, and resumes a stopped run without redoing or duplicating samples. (Several Ray workers:
test_factory_ray.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffumatting.cli.commands import generate

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "api" / "09_data_factory.json"


def _tiny(prompt: dict) -> dict:
    out = json.loads(json.dumps(prompt))
    for nid, node in out.items():
        if node["class_type"] == "CheckpointLoaderSimple":
            out[nid] = {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}}
    return out


def _executor(comfy, calls, stop_after=None):
    """execute(prompt) via ComfyUI's PromptExecutor on the tiny models; KeyboardInterrupt after ``stop_after`` runs.
    ComfyUI's own errors (comfy_bootstrap.PromptError) surface as they are, as in `generate`."""
    from diffumatting.comfy_bootstrap import PromptRunner

    runner = PromptRunner(comfy)

    def run(prompt):
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        name = next(n["inputs"]["name"] for n in prompt.values() if n["class_type"] == generate.DATASET_NODE)
        calls.append(name)
        runner.run(_tiny(prompt))

    return run


def test_factory_runs_and_resumes_in_comfyui(comfy, tiny_sd15):
    """The factory holds the folder's one writer; while a sample runs, the folder is captured, so ComfyUI's
    SaveMattingDataset node (the pack's other import in this process) only prepares the sample, and the factory's
    writer commits it (without the capture the node would open a writer of its own and be refused by the lock)."""
    template = generate.load_workflow(str(WORKFLOW))
    prompts = ["a red apple", "a blue mug"]
    out = Path(comfy.folder_paths.get_output_directory()) / "factory"
    common = dict(checkpoint="tiny.safetensors", seed=10, steps=1, size=64, progress=False)
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        # gate off so every generated sample is committed: the tiny random model paints noise
        generate.run_factory(_executor(comfy, calls, stop_after=2), _gate_off(template), prompts, 3, str(out),
                             "factory", **common)
    assert calls == ["gen_000000", "gen_000001"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["gen_000000", "gen_000001"]
    assert rows[1]["prompt"] == "a blue mug" and rows[1]["seed"] == 11 and rows[1]["model"] == "tiny.safetensors"
    calls2: list[str] = []
    counts = generate.run_factory(_executor(comfy, calls2), _gate_off(template), prompts, 3, str(out), "factory",
                                  **common)
    assert calls2 == ["gen_000002"]  # resumed: nothing redone
    assert counts["accepted"] == 3 and counts["ran_now"] == 1
    names = [json.loads(line)["name"] for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert names == ["gen_000000", "gen_000001", "gen_000002"]
    for folder in ("image", "fg", "alpha", "trimap", "caption"):
        assert sorted(p.stem for p in (out / folder).iterdir()) == names
    assert not (out / "failed.jsonl").exists()
    # the factory closed its writer: the folder is free for the next run (or another process)
    from diffumatting.dataset import MattingDatasetWriter

    with MattingDatasetWriter(out) as w:
        assert sorted(w.committed) == names


def test_factory_with_gate_counts_rejections(comfy, tiny_sd15):
    """With the quality gate on, what the gate rejects is counted and not retried on resume."""
    template = generate.load_workflow(str(WORKFLOW))
    out = Path(comfy.folder_paths.get_output_directory()) / "factory_gate"
    calls: list[str] = []
    counts = generate.run_factory(_executor(comfy, calls), template, ["a cat"], 2, str(out), "factory_gate",
                                  checkpoint="tiny.safetensors", seed=0, steps=1, size=64, max_attempts=3,
                                  progress=False)
    assert len(calls) == counts["accepted"] + counts["rejected"] and counts["ran_now"] == len(calls)
    assert counts["accepted"] == 2 or len(calls) == 3
    calls2: list[str] = []
    generate.run_factory(_executor(comfy, calls2), template, ["a cat"], 2, str(out), "factory_gate",
                         checkpoint="tiny.safetensors", seed=0, steps=1, size=64, max_attempts=3, progress=False)
    assert calls2 == []


def _gate_off(template: dict) -> dict:
    t = json.loads(json.dumps(template))
    for node in t.values():
        if node["class_type"] == generate.DATASET_NODE:
            node["inputs"]["quality_gate"] = False
    return t


@pytest.mark.slow
def test_generate_command_end_to_end(comfy, random_sd15_checkpoint, tmp_path):
    """The real command in a fresh process: full-size random SD1.5 checkpoint, 64 px, 1 step, progress bar."""
    models = comfy.models_dir
    yaml_path = tmp_path / "extra_model_paths.yaml"
    yaml_path.write_text(f"tests:\n  base_path: {models}\n  checkpoints: checkpoints\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# subjects\na red apple\na blue mug\n")
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "diffumatting", "generate", "--comfyui", str(comfy.root), "--checkpoint",
           random_sd15_checkpoint, "--prompts", str(prompts), "--count", "1", "--max-attempts", "2", "--out", str(out),
           "--steps", "1", "--size", "64", "--cpu", "--extra-model-paths", str(yaml_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert "accepted" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # our CLI's error format
    done = len((out / "metadata.jsonl").read_text().splitlines()) if (out / "metadata.jsonl").exists() else 0
    rejected = len((out / "rejected.jsonl").read_text().splitlines()) if (out / "rejected.jsonl").exists() else 0
    assert done + rejected >= 1
    # a second run with the same arguments has nothing left to do
    proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert "0 generated in this run" in proc2.stdout, proc2.stdout + proc2.stderr[-2000:]


def test_factory_stops_at_once_on_a_workflow_comfyui_refuses(comfy, tiny_sd15):
    """A configuration error (here an unknown node) is not one sample's failure: the run stops with ComfyUI's message
    and records nothing, instead of marking every planned sample failed."""
    template = _gate_off(generate.load_workflow(str(WORKFLOW)))
    template["99"] = {"class_type": "DMNoSuchNode", "inputs": {}}
    out = Path(comfy.folder_paths.get_output_directory()) / "factory_refused"
    calls: list[str] = []
    with pytest.raises(generate.CLIError, match=r"worker 0 \(in this process\): the workflow is not valid here"):
        generate.run_factory(_executor(comfy, calls), template, ["a cat"], 3, str(out), "factory_refused",
                             checkpoint="tiny.safetensors", steps=1, size=64, progress=False)
    assert calls == ["gen_000000"]
    assert not (out / "failed.jsonl").exists() and not (out / "metadata.jsonl").exists()
