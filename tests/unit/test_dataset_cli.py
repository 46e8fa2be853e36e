"""`python -m diffumatting dataset` and the data factory's resume logic (generate), without ComfyUI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffumatting.cli import CLIError, main
from diffumatting.cli.commands import generate
from diffumatting.common.images import save_png
from diffumatting.dataset import MattingDatasetWriter, open_writer

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
        with open_writer(self.root, trimap_radius=2) as w:  # like the node: the factory's own writer, shared
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


# -- #19: bad input to `dataset` and `generate` ------------------------------------------------------------------

def _one_picture(tmp_path, name="good.png"):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    _green_picture(src / name)
    return src


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("options, message", [
    (["--trimap-radius", "-1"], "--trimap-radius: expected 0..256"),
    (["--trimap-radius", "1000000"], "--trimap-radius: expected 0..256"),
    (["--min-coverage", "0.9", "--max-coverage", "0.1"], "--min-coverage (0.9) must not exceed --max-coverage"),
    (["--max-border-alpha", "nan"], "--max-border-alpha: expected a fraction"),
])
def test_dataset_options_refused_up_front(tmp_path, capsys, monkeypatch, options, message):
    import diffumatting.greenpost as gp

    monkeypatch.setattr(gp, "green_post", lambda *a, **k: pytest.fail("keyed before the options were checked"))
    src = _one_picture(tmp_path)
    assert main(["dataset", str(src), "--out", str(tmp_path / "ds"), *options]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "ds").exists()  # nothing created


def test_dataset_caption_not_utf8_is_named_before_keying(tmp_path, capsys, monkeypatch):
    import diffumatting.greenpost as gp

    src = _one_picture(tmp_path)
    _green_picture(src / "b.png")
    (src / "b.txt").write_bytes(b"\xff\xfea caption in UTF-16")
    monkeypatch.setattr(gp, "green_post", lambda *a, **k: pytest.fail("keyed before the captions were checked"))
    assert main(["dataset", str(src), "--out", str(tmp_path / "ds")]) == 2
    err = _error(capsys)
    assert f"{src / 'b.txt'}: the caption file is not UTF-8" in err
    assert not (tmp_path / "ds").exists()


def test_dataset_unwritable_out_is_one_line(tmp_path, capsys):
    src = _one_picture(tmp_path)
    (tmp_path / "file").write_text("x")
    assert main(["dataset", str(src), "--out", str(tmp_path / "file")]) == 2
    assert "--out:" in _error(capsys)
    assert main(["dataset", str(src), "--out", "/proc/diffumatting_nope/ds"]) == 2  # cannot be created
    assert "--out: /proc/diffumatting_nope/ds: cannot write a data set here" in _error(capsys)


def test_dataset_resume_is_by_source_not_by_sanitised_name(tmp_path, capsys):
    one, two = tmp_path / "nm1", tmp_path / "nm2"
    one.mkdir()
    two.mkdir()
    _green_picture(one / "a_b.png")
    _green_picture(two / "a b.png")
    _green_picture(two / "a_b.png")
    out = tmp_path / "ds"
    assert main(["dataset", str(one), "--out", str(out)]) == 0
    assert main(["dataset", str(two), "--out", str(out)]) == 0
    assert "2 accepted, 0 rejected now (0 already done)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    by_source = {Path(r["source"]).relative_to(tmp_path).as_posix(): r["name"] for r in rows}
    assert set(by_source) == {"nm1/a_b.png", "nm2/a b.png", "nm2/a_b.png"}  # every file keyed, none skipped
    assert len(set(by_source.values())) == 3  # no name reused
    # a file added to an input folder between runs is keyed; the others are not redone
    _green_picture(one / "a-b.png")
    assert main(["dataset", str(one), str(two), "--out", str(out)]) == 0
    assert "1 accepted, 0 rejected now (3 already done)" in capsys.readouterr().out


def test_dataset_opaque_alpha_channel_is_reported_and_ignored(tmp_path, capsys):
    from diffumatting.common.images import load_image

    src = tmp_path / "in"
    src.mkdir()
    _green_picture(src / "plain.png")
    rgb = load_image(src / "plain.png").rgb
    save_png(src / "rgba.png", rgb, torch.ones(1, *rgb.shape[1:]))  # an RGBA export with an all-opaque alpha
    (src / "plain.png").unlink()
    assert main(["dataset", str(src), "--out", str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert "rgba.png: its alpha channel is fully opaque" in captured.err
    assert "1 accepted, 0 rejected now" in captured.out  # keyed like the plain picture, not rejected as 'full'


HOLD = ("import sys\nfrom diffumatting.dataset import MattingDatasetWriter\n"
        "w = MattingDatasetWriter(sys.argv[1])\nprint('ready', flush=True)\nsys.stdin.read()\n")


def test_second_dataset_run_on_a_folder_is_refused(tmp_path, capsys):
    src = _one_picture(tmp_path)
    out = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert main(["dataset", str(src), "--out", str(out)]) == 2
        err = _error(capsys)
        assert f"pid {holder.pid}" in err and str(out) in err and "only one writer per folder" in err
        assert not (out / "metadata.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert main(["dataset", str(src), "--out", str(out)]) == 0  # the killed holder left no stale lock


def test_generate_input_errors(tmp_path, monkeypatch):
    (tmp_path / "p.txt").write_bytes(b"a cat\n\xff\xfe\n")
    with pytest.raises(CLIError, match=r"--prompts: .*p\.txt is not UTF-8"):
        generate.read_prompts(str(tmp_path / "p.txt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CLIError, match="--out: .* exists and is not a folder"):
        generate.check_out_folder(str(tmp_path / "file"))
    with pytest.raises(CLIError, match="is not a folder"):
        generate.check_out_folder(str(tmp_path / "file" / "ds"))
    monkeypatch.setattr(generate.os, "access", lambda *a: False)  # a read-only file system
    with pytest.raises(CLIError, match="is not writable"):
        generate.check_out_folder(str(tmp_path / "new" / "ds"))
    assert not (tmp_path / "new").exists()


def test_generate_bad_comfyui_leaves_no_out_folder(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "ds"
    assert main(["generate", "--comfyui", str(tmp_path / "nope"), "--checkpoint", "x.safetensors", "--prompts",
                 str(tmp_path / "p.txt"), "--count", "1", "--out", str(out)]) == 2
    assert "--comfyui" in _error(capsys)
    assert not out.exists()


def test_factory_refuses_a_folder_another_process_writes(tmp_path):
    root = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        fake = FakeComfy(str(root))
        with pytest.raises(CLIError, match=f"pid {holder.pid}"):
            generate.run_factory(fake, TEMPLATE, ["x"], 1, str(root), ".", checkpoint="m", progress=False)
        assert fake.ran == []
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_factory_reads_the_nodes_results_from_the_shared_writer(tmp_path, monkeypatch):
    """The driver learns what the node wrote from the writer they share, not by re-reading metadata.jsonl."""
    from diffumatting.dataset import writer as wmod

    root = str(tmp_path / "ds")
    calls = {"n": 0}
    real = wmod.MattingDatasetWriter.recover

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(wmod.MattingDatasetWriter, "recover", counting)
    counts = generate.run_factory(FakeComfy(root), TEMPLATE, ["x"], 3, root, ".", checkpoint="m", progress=False)
    assert counts["accepted"] == 3 and calls["n"] == 1  # opened (and recovered) once, then shared
    assert not any(os.path.exists(os.path.join(root, d)) and os.listdir(os.path.join(root, d))
                   for d in (".staging", ".pending"))


def test_dataset_unreadable_input_is_reported_and_the_rest_are_keyed(tmp_path, capsys):
    """Report case #19 (dataset stopped at the first unreadable input): it is named, counted, and the others are
    keyed; the exit status says something failed; a rerun keys only what is missing."""
    src = tmp_path / "in"
    src.mkdir()
    _green_picture(src / "a_good.png")
    (src / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _green_picture(src / "c_good.png")
    out = tmp_path / "ds"
    assert main(["dataset", str(src), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "b_broken.png" in captured.err and "1 of 3 input(s) could not be read or keyed" in captured.err
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == ["a_good", "c_good"]
    _green_picture(src / "b_broken.png")  # fixed: the rerun keys it alone
    assert main(["dataset", str(src), "--out", str(out)]) == 0
    assert "1 accepted, 0 rejected now (2 already done)" in capsys.readouterr().out
