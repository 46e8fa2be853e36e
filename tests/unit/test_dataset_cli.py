"""`python -m diffumatting dataset` and the data factory's resume logic (generate), without ComfyUI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffumatting.cli import CLIError, main
from diffumatting.cli.commands import generate
from diffumatting.common.images import save_png
from diffumatting.dataset import MattingDatasetWriter

REPO = Path(__file__).resolve().parents[2]
KEY = torch.tensor([0.0, 177 / 255, 64 / 255])


def _green_picture(path, box=(16, 48, 16, 48), size=64):
    a = torch.zeros(1, size, size)
    y0, y1, x0, x1 = box
    a[:, y0:y1, x0:x1] = 1.0
    fg = torch.tensor([0.8, 0.2, 0.3]).reshape(3, 1, 1).expand(3, size, size)
    save_png(path, a * fg + (1 - a) * KEY.reshape(3, 1, 1))


def test_dataset_command_keys_gates_and_resumes(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _green_picture(src / "good.png")
    (src / "good.txt").write_text("a red square\n")
    _green_picture(src / "cut.png", box=(0, 40, 16, 48))  # touches the top border
    out = tmp_path / "ds"
    assert main(["dataset", str(src), "--out", str(out), "--trimap-radius", "3"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["good"]
    assert rows[0]["caption"] == "a red square" and rows[0]["key_colour"] == "#00b140"
    assert (out / "fg/good.png").is_file() and not (out / "fg/cut.png").exists()
    assert json.loads((out / "rejected.jsonl").read_text())["reasons"] == ["border"]
    assert "1 accepted, 1 rejected now" in capsys.readouterr().out
    # resume: nothing is redone
    assert main(["dataset", str(src), "--out", str(out)]) == 0
    assert "0 accepted, 0 rejected now (2 already done)" in capsys.readouterr().out
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 1


def test_dataset_command_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "diffumatting", "dataset", str(tmp_path / "missing"), "--out",
                           str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


TEMPLATE = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
    "2": {"class_type": "DiffuMattingGreenControlSampler",
          "inputs": {"model": ["1", 0], "subject": "old", "seed": 0, "steps": 20, "width": 512, "height": 512}},
    "3": {"class_type": "DiffuMattingSaveMattingDataset",
          "inputs": {"image": ["2", 0], "name": "", "prompt": "", "seed": 0, "model": "", "folder": "x"}},
}


def test_build_prompt_fills_sample_fields():
    p = generate.build_prompt(TEMPLATE, checkpoint="m.safetensors", subject="a cat", seed=7, name="gen_000007",
                              folder=".", steps=4, size=64)
    assert p["1"]["inputs"]["ckpt_name"] == "m.safetensors"
    assert p["2"]["inputs"] == {"model": ["1", 0], "subject": "a cat", "seed": 7, "steps": 4, "width": 64, "height": 64}
    assert p["3"]["inputs"] == {"image": ["2", 0], "name": "gen_000007", "prompt": "a cat", "seed": 7,
                                "model": "m.safetensors", "folder": "."}
    assert TEMPLATE["2"]["inputs"]["subject"] == "old"  # the template is not modified


class FakeComfy:
    """Stands in for ComfyUI: 'runs' a prompt by writing the sample its dataset node asks for; can stop mid-run."""

    def __init__(self, root, stop_after=None, reject_seeds=()):
        self.root, self.stop_after, self.reject_seeds = root, stop_after, set(reject_seeds)
        self.ran: list[str] = []

    def __call__(self, prompt):
        if self.stop_after is not None and len(self.ran) >= self.stop_after:
            raise KeyboardInterrupt
        ds = next(n["inputs"] for n in prompt.values() if n["class_type"] == generate.DATASET_NODE)
        seed = prompt["2"]["inputs"]["seed"]
        assert ds["seed"] == seed and ds["prompt"] == prompt["2"]["inputs"]["subject"]
        self.ran.append(ds["name"])
        a = torch.zeros(1, 32, 32)
        a[:, 8:24, 8:24] = 1.0
        if seed in self.reject_seeds:
            a[:, 0:24, 8:24] = 1.0  # touches the border: the gate rejects it
        fg = torch.full((3, 32, 32), 0.5)
        w = MattingDatasetWriter(self.root, trimap_radius=2)
        w.write(ds["name"], fg, fg, a, torch.tensor([0.0, 1.0, 0.0]), caption=ds["prompt"],
                meta={"prompt": ds["prompt"], "seed": ds["seed"]})


def test_factory_resumes_without_redoing_or_duplicating(tmp_path):
    root = str(tmp_path / "ds")
    prompts = ["a cat", "a dog", "a cup"]
    fake = FakeComfy(root, stop_after=3, reject_seeds={101})
    with pytest.raises(KeyboardInterrupt):
        generate.run_factory(fake, TEMPLATE, prompts, 5, root, ".", checkpoint="m", seed=100, progress=False)
    assert fake.ran == ["gen_000000", "gen_000001", "gen_000002"]
    fake2 = FakeComfy(root, reject_seeds={101})
    counts = generate.run_factory(fake2, TEMPLATE, prompts, 5, root, ".", checkpoint="m", seed=100, progress=False)
    assert fake2.ran == ["gen_000003", "gen_000004", "gen_000005"]  # nothing redone
    assert counts["accepted"] == 5 and counts["rejected"] == 1 and counts["ran_now"] == 3
    rows = [json.loads(line) for line in (Path(root) / "metadata.jsonl").read_text().splitlines()]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)) == 5
    by_name = {r["name"]: r for r in rows}
    assert by_name["gen_000004"]["prompt"] == "a dog" and by_name["gen_000004"]["seed"] == 104
    # already complete: a third run does nothing
    fake3 = FakeComfy(root)
    generate.run_factory(fake3, TEMPLATE, prompts, 5, root, ".", checkpoint="m", seed=100, progress=False)
    assert fake3.ran == []


def test_factory_stops_at_max_attempts(tmp_path):
    root = str(tmp_path / "ds")
    fake = FakeComfy(root, reject_seeds=set(range(100)))
    counts = generate.run_factory(fake, TEMPLATE, ["x"], 2, root, ".", checkpoint="m", max_attempts=4, progress=False)
    assert counts["accepted"] == 0 and counts["rejected"] == 4 and len(fake.ran) == 4


def test_factory_input_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(CLIError, match="no prompts"):
        generate.read_prompts(str(tmp_path / "empty.txt"))
    (tmp_path / "wf.json").write_text(json.dumps({"1": {"class_type": "SaveImage", "inputs": {}}}))
    with pytest.raises(CLIError, match="exactly one DiffuMattingSaveMattingDataset"):
        generate.load_workflow(str(tmp_path / "wf.json"))
    (tmp_path / "ui.json").write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(CLIError, match="not an API-format workflow"):
        generate.load_workflow(str(tmp_path / "ui.json"))
    with pytest.raises(CLIError, match="count"):
        generate.run_factory(lambda p: None, TEMPLATE, ["x"], 0, str(tmp_path / "d"), ".", checkpoint=None,
                             progress=False)


def test_build_prompt_sets_seed_and_subject_primitives():
    template = {
        "1": {"class_type": "PrimitiveInt", "inputs": {"value": 1}, "_meta": {"title": "seed"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "old"}, "_meta": {"title": "subject"}},
        "3": {"class_type": "PrimitiveInt", "inputs": {"value": 5}, "_meta": {"title": "other"}},
        "4": {"class_type": "DiffuMattingGreenControlSampler", "inputs": {"seed": ["1", 0], "subject": ["2", 0]}},
        "5": {"class_type": "DiffuMattingSaveMattingDataset",
              "inputs": {"name": "", "prompt": ["2", 0], "seed": ["1", 0], "folder": "x", "model": ""}},
    }
    p = generate.build_prompt(template, checkpoint=None, subject="a cat", seed=9, name="gen_000009", folder=".")
    assert p["1"]["inputs"]["value"] == 9 and p["2"]["inputs"]["value"] == "a cat"
    assert p["3"]["inputs"]["value"] == 5  # untitled primitives are left alone
    assert p["4"]["inputs"] == {"seed": ["1", 0], "subject": ["2", 0]}  # links stay links
    assert p["5"]["inputs"]["name"] == "gen_000009" and p["5"]["inputs"]["model"] == ""
