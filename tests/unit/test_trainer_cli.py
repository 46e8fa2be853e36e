"""The `train` command's argument handling (no ComfyUI needed: the checkpoint is never loaded here)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffumatting.cli import build_parser, main


def _args(tmp_path, *extra):
    return build_parser().parse_args(
        ["train", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra]
    )


def test_help_documents_every_training_option(capsys):
    from diffumatting.trainer.loop import TrainOptions

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    flags = {
        "out_dir": "--out", "weights": "--w-green", "t_min": "--t-range", "t_max": "--t-range", "resume": "--no-resume",
        "progress": "--no-progress",
    }
    for f in dataclasses.fields(TrainOptions):
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in text, f"{f.name} ({flag}) is not in --help"
    for flag in ("--resolution", "--key-colour", "--scale", "--hflip", "--jitter", "--caption-suffix", "--caption-dropout",
                 "--synthetic", "--comfyui", "--w-attn", "--w-canvas", "--w-tb"):
        assert flag in text


def test_options_mapping(tmp_path):
    from diffumatting.cli.commands.train import build_options

    args = _args(tmp_path, "--steps", "7", "--grad-accum", "3", "--w-green", "0.25", "--w-tb", "2", "--t-range", "10,900",
                 "--targets", "attn,ff", "--attn-levels", "4", "--no-resume", "--precision", "fp32")
    o = build_options(args)
    assert (o.steps, o.grad_accum, o.t_min, o.t_max, o.resume, o.precision) == (7, 3, 10, 900, False, "fp32")
    assert o.weights.green == 0.25 and o.weights.tb == 2.0 and o.targets == ("attn", "ff") and o.attn_levels == (4,)


def test_dataset_from_folder_plus_synthetic(tmp_path):
    from diffumatting.cli.commands.train import build_dataset
    from diffumatting.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "d", 2, 64, seed=0, caption="a cup")
    args = build_parser().parse_args(["train", "--checkpoint", "x", "--data", str(tmp_path / "d"), "--out", str(tmp_path),
                                      "--synthetic", "3", "--resolution", "64", "--key-colour", "blue"])
    ds = build_dataset(args)
    assert len(ds) == 5
    item = ds[4]
    assert item["image"].shape == (3, 64, 64)
    assert ds.key_colour.preset == "chroma_blue" and torch.equal(ds.key, ds.key_colour.tensor())


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    rc = main(["train", "--checkpoint", str(tmp_path / "missing.safetensors"), "--data", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --checkpoint") and err.count("\n") == 1


def test_bad_option_value_is_one_line_error(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    rc = main(["train", "--checkpoint", str(ckpt), "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--lr", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "lr" in err and err.count("\n") == 1


def test_comfy_bootstrap_errors(tmp_path, monkeypatch):
    import sys

    from diffumatting import comfy_bootstrap as comfy_runtime

    if "comfy.model_management" in sys.modules:
        pytest.skip("ComfyUI already imported in this process")
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(ValueError, match="COMFYUI_PATH"):
        comfy_runtime.import_comfy(None)
    with pytest.raises(ValueError, match="not a ComfyUI folder"):
        comfy_runtime.import_comfy(tmp_path)
    with pytest.raises(ValueError, match="checkpoint"):
        comfy_runtime.load_checkpoint(tmp_path / "none.safetensors", tmp_path)


def test_default_suffix_names_the_key_colour(tmp_path):
    from diffumatting.cli.commands.train import build_dataset
    from diffumatting.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "d", 1, 64, seed=0, caption="a cup")
    for colour, word in (("green", "green"), ("blue", "blue"), ("#ff00ff", "magenta")):
        args = build_parser().parse_args(["train", "--checkpoint", "x", "--data", str(tmp_path / "d"), "--out",
                                          str(tmp_path), "--key-colour", colour, "--resolution", "64",
                                          "--caption-dropout", "0"])
        assert build_dataset(args)[0]["prompt"] == f"a cup, isolated on a plain {word} screen background"


def test_trim_log(tmp_path):
    from diffumatting.trainer.loop import _trim_log

    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(f'{{"step": {i}, "loss": 1.0}}\n' for i in range(1, 8)) + "garbage\n")
    _trim_log(log, 4)
    assert [int(line.split(":")[1].split(",")[0]) for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def _train(tmp_path, capsys, *extra):
    """`train` with a dummy checkpoint and a one-sample data folder -> (exit code, stderr)."""
    from diffumatting.synthetic import write_synthetic_folder

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    if not (tmp_path / "d").is_dir():
        write_synthetic_folder(tmp_path / "d", 1, 64, seed=0, caption="a cup")
    rc = main(["train", "--checkpoint", str(ckpt), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
               "--resolution", "64", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("extra,flag,says", [
    (("--caption-suffix", "on a plain background"), "--caption-suffix", "does not name the key colour word 'green'"),
    (("--band-radius", "-1"), "--band-radius", "0 or more pixels"),
    (("--synthetic", "-1"), "--synthetic", "0 or more")])
def test_bad_data_options_are_refused_before_the_checkpoint_is_loaded(tmp_path, capsys, monkeypatch, extra, flag,
                                                                       says):
    """#19 T4-T6: one-line errors naming the flag; the checkpoint loader is never reached."""
    from diffumatting import comfy_bootstrap

    monkeypatch.setattr(comfy_bootstrap, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    rc, err = _train(tmp_path, capsys, *extra)
    assert rc == 2 and err.startswith(f"error: {flag}") and says in err and err.count("\n") == 1, err


def test_a_suffix_without_the_word_is_fine_when_the_attention_loss_is_off(tmp_path):
    from diffumatting.cli.commands.train import build_dataset
    from diffumatting.synthetic import write_synthetic_folder

    write_synthetic_folder(tmp_path / "d", 1, 64, seed=0, caption="a cup")
    for extra in (("--w-attn", "0"), ("--key-word", "plain")):
        args = build_parser().parse_args(["train", "--checkpoint", "x", "--data", str(tmp_path / "d"), "--out",
                                          str(tmp_path), "--resolution", "64", "--caption-dropout", "0",
                                          "--caption-suffix", "on a plain background", *extra])
        assert build_dataset(args)[0]["prompt"] == "a cup, on a plain background"


def _fake_comfy(monkeypatch):
    """ComfyUI's checkpoint loader stand-in that reads files the way comfy.utils.load_torch_file does (safetensors
    for .safetensors, torch.load(weights_only=True) otherwise), so their real exceptions reach load_checkpoint."""
    import types

    from safetensors.torch import load_file

    from diffumatting import comfy_bootstrap

    def guess(path, **kw):
        sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
        raise RuntimeError(f"ERROR: Could not detect model type of: {path} ({len(sd)} keys)")

    ns = types.SimpleNamespace(sd=types.SimpleNamespace(load_checkpoint_guess_config=guess))
    monkeypatch.setattr(comfy_bootstrap, "import_comfy", lambda *a, **k: ns)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unloadable_checkpoint_files_are_one_line_errors_naming_the_flag(tmp_path, capsys, monkeypatch):
    """#19 T1 (pickle .ckpt), T2 (text file named .safetensors), T3 (truncated safetensors)."""
    import pickle

    from safetensors.torch import save_file

    from diffumatting import comfy_bootstrap
    from diffumatting.synthetic import write_synthetic_folder

    _fake_comfy(monkeypatch)
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil()}, protocol=2))
    text = tmp_path / "text.safetensors"
    text.write_text("this is not a model\n" * 50)
    full = tmp_path / "full.safetensors"
    save_file({"w": torch.zeros(1000)}, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:2000])
    for path in (evil, text, cut):
        with pytest.raises(ValueError) as err:
            comfy_bootstrap.load_checkpoint(path, what="--checkpoint")
        msg = str(err.value)
        assert msg.startswith(f"--checkpoint: {path} could not be loaded") and "\n" not in msg, msg
    write_synthetic_folder(tmp_path / "d", 1, 64, seed=0)
    rc = main(["train", "--checkpoint", str(cut), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
               "--resolution", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --checkpoint") and err.count("\n") == 1, err


def test_an_unwritable_out_is_refused_before_the_checkpoint_is_loaded(tmp_path, capsys, monkeypatch):
    from diffumatting import comfy_bootstrap

    monkeypatch.setattr(comfy_bootstrap, "load_checkpoint", lambda *a, **k: pytest.fail("loaded the checkpoint"))
    (tmp_path / "o").write_text("a file where the output folder should be")
    rc, err = _train(tmp_path, capsys)
    assert rc == 2 and err.startswith("error: --out") and "not a folder" in err, err
