"""The standalone trainer against a real ComfyUI: loss goes down, kill-and-resume, LoRA loads through LoraLoader.

The training runs use the harness's tiny SD1.5 model (ComfyUI's own classes, random weights) at 64 px, so they
take a minute or two on a loaded CPU. The CLI run on the full-size random SD1.5 checkpoint is marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def _dataset(count=2, resolution=64, augment=False):
    from diffumatting.synthetic import synthetic_matte
    from diffumatting.trainer.data import DataOptions, GreenDataset

    pairs = [(*synthetic_matte(resolution, 40 + i), "a toy") for i in range(count)]
    opts = DataOptions(resolution=resolution, caption_dropout=0.0, jitter=0.1 if augment else 0.0,
                       hflip=0.5 if augment else 0.0, scale=(0.5, 0.95) if augment else (0.8, 0.8))
    return GreenDataset(pairs, opts)


@pytest.fixture(scope="module")
def trained(tiny_sd15, tmp_path_factory):
    """30 steps on a fixed 2-sample batch (no augmentation), with the joint loss on that batch before and after."""
    from diffumatting.trainer.data import collate
    from diffumatting.trainer.loop import GreenTrainer, TrainOptions, export_lora

    out = tmp_path_factory.mktemp("train")
    ds = _dataset()
    opts = TrainOptions(out_dir=str(out), steps=30, batch_size=2, lr=2e-3, rank=4, conv_rank=4,
                        checkpoint_every=100, progress=False, resume=False)
    fixed = collate([ds[i] for i in range(len(ds))])
    unet = tiny_sd15.model.model.diffusion_model
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([500.0])
    with torch.no_grad():
        base_out = unet(x, ts, context=ctx)
    with torch.inference_mode(False), torch.enable_grad():
        tr = GreenTrainer(tiny_sd15.model, tiny_sd15.clip, tiny_sd15.vae, ds, opts)
        tr.lora.attach()
        try:
            before = [tr.evaluate(fixed, s) for s in (1, 2, 3)]
            terms = [tr.step() for _ in range(opts.steps)]
            after = [tr.evaluate(fixed, s) for s in (1, 2, 3)]
            with torch.no_grad():
                hooked_out = unet(x, ts, context=ctx)
            path = export_lora(tr, out / "green.safetensors")
        finally:
            tr.lora.detach()
    with torch.no_grad():
        detached_out = unet(x, ts, context=ctx)
    return dict(before=before, after=after, terms=terms, path=path, trainer=tr, base_out=base_out,
                hooked_out=hooked_out, detached_out=detached_out)


def _mean(rows, key):
    return sum(r[key] for r in rows) / len(rows)


def test_thirty_steps_reduce_joint_loss_on_fixed_batch(trained):
    before, after = _mean(trained["before"], "loss"), _mean(trained["after"], "loss")
    print(f"joint loss on the fixed batch: before {before:.4f}, after 30 steps {after:.4f}")
    assert after < 0.9 * before, (before, after)
    for row in trained["terms"]:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items() if k != "step")
    # the attention form is really computed (green-token maps recorded from the UNet's cross-attention)
    assert all(r["attn"] > 0 for r in trained["before"])
    assert trained["trainer"].step_done == 30


def test_lora_hooks_change_unet_and_detach_restores_it(trained):
    assert not torch.allclose(trained["hooked_out"], trained["base_out"], atol=1e-5)
    assert torch.equal(trained["detached_out"], trained["base_out"])


def test_exported_keys_map_onto_comfy_unet(trained, tiny_sd15):
    import comfy.lora
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(trained["path"]), safe_load=True)
    key_map = comfy.lora.model_lora_keys_unet(tiny_sd15.model.model, {})
    patches = comfy.lora.load_lora(sd, key_map)
    n_layers = len(trained["trainer"].lora.paths)
    assert len(patches) == n_layers
    assert n_layers == sum(k.endswith(".lora_down.weight") for k in sd)
    assert any("attn2_to_k" in k for k in sd) and any("in_layers_2" in k for k in sd)


def _sample_prompt(lora_name, strength):
    model_src = ["1", 0]
    prompt = {
        "1": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a toy, isolated on a pure green screen background"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "DMTestCapture", "inputs": {"value": ["6", 0], "key": "latent"}},
    }
    if lora_name is not None:
        prompt["2"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora_name,
                                                              "strength_model": strength, "strength_clip": 0.0}}
        model_src = ["2", 0]
    prompt["6"] = {"class_type": "KSampler", "inputs": {
        "model": model_src, "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "seed": 7,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return prompt


def test_lora_through_loraloader_changes_output_and_strength_zero_does_not(trained, comfy, run_prompt):
    name = "diffumatting_test_green.safetensors"
    shutil.copy(trained["path"], comfy.models_dir / "loras" / name)
    base = run_prompt(_sample_prompt(None, 0.0))["latent"]["samples"]
    with_lora = run_prompt(_sample_prompt(name, 1.0))["latent"]["samples"]
    zero = run_prompt(_sample_prompt(name, 0.0))["latent"]["samples"]
    assert torch.isfinite(with_lora).all()
    assert (with_lora - base).abs().max().item() > 1e-4
    assert torch.allclose(zero, base, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# kill and resume (the trainer in a subprocess, SIGKILLed after a checkpoint)

SCRIPT = textwrap.dedent(
    """
    import importlib.util, logging, os, sys
    logging.basicConfig(level=logging.INFO)
    repo, conftest, out, data = sys.argv[1:5]
    from diffumatting.comfy_bootstrap import import_comfy
    import_comfy(os.environ["COMFYUI_PATH"], cpu=True)
    spec = importlib.util.spec_from_file_location("dm_conftest", conftest)
    cf = importlib.util.module_from_spec(spec); spec.loader.exec_module(cf)
    model, clip, vae, _ = cf.build_models("sd15", cf.TINY_UNET["sd15"], cf.TINY_VAE_DDCONFIG, cf.TINY_TEXT_ENCODER, seed=11)
    from diffumatting.trainer.data import DataOptions, GreenDataset
    from diffumatting.trainer.loop import TrainOptions, train
    ds = GreenDataset(data, DataOptions(resolution=64))
    opts = TrainOptions(out_dir=out, steps=8, batch_size=1, lr=1e-3, rank=4, conv_rank=4, checkpoint_every=2,
                        keep_checkpoints=10, progress=False, seed=3)
    res = train(model, clip, vae, ds, opts)
    print("RESUMED_FROM", res.resumed_from, "STEPS", res.steps, flush=True)
    """
)


def _run(script, out, data, wait_for=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(script), str(REPO_ROOT), str(CONFTEST), str(out), str(data)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(script.parent))
    if wait_for is None:
        text, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, text[-3000:]
        return text
    deadline = time.time() + 900
    while time.time() < deadline:
        if (out / "checkpoints" / wait_for).is_file():
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            return None
        if proc.poll() is not None:
            text = proc.stdout.read()
            pytest.fail(f"the trainer ended before the checkpoint {wait_for} appeared:\n{text[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for a checkpoint")


def _read(path):
    """checkpoint -> (flat {name: tensor}, info) of its state tree."""
    from diffumatting.trainer.loop import read_checkpoint

    state = read_checkpoint(path)
    flat = {}

    def walk(obj, name):
        if torch.is_tensor(obj):
            flat[name] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}.{i}")

    walk({k: v for k, v in state.items() if k != "info"}, "state")
    info = dict(state["info"], param_groups=state["optimizer"]["param_groups"],
                scheduler=state["scheduler"]["last_epoch"])
    return flat, info


def test_kill_and_resume_continues_with_identical_state(tmp_path):
    from diffumatting.synthetic import write_synthetic_folder
    from diffumatting.trainer.loop import list_checkpoints

    if not os.environ.get("COMFYUI_PATH"):
        pytest.skip("needs COMFYUI_PATH")
    data = tmp_path / "data"
    write_synthetic_folder(data, 3, 64, seed=0, caption="a toy")
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    ref, killed = tmp_path / "ref", tmp_path / "killed"

    _run(script, ref, data)
    _run(script, killed, data, wait_for="step_00000004.safetensors")
    steps_before = [s for s, _ in list_checkpoints(killed)]
    assert steps_before and max(steps_before) >= 4 and not (killed / "diffumatting_green_lora.safetensors").exists()
    last = max(steps_before)
    # every checkpoint that exists after the kill is complete and readable (write-then-rename)
    for _, p in list_checkpoints(killed):
        _read(p)
    text = _run(script, killed, data)
    assert f"RESUMED_FROM {last} STEPS 8" in text, text[-2000:]

    # the state at the resume point is the reference run's state, and so is every later checkpoint
    ref_ckpts = dict(list_checkpoints(ref))
    for step, path in list_checkpoints(killed):
        t_k, info_k = _read(path)
        t_r, info_r = _read(ref_ckpts[step])
        assert info_k["step"] == info_r["step"] == step
        assert info_k["param_groups"] == info_r["param_groups"] and info_k["scheduler"] == info_r["scheduler"] == step
        assert t_k.keys() == t_r.keys()
        optim_keys = [k for k in t_k if k.startswith("state.optimizer.state.")]
        assert optim_keys
        for k in t_k:
            assert torch.equal(t_k[k], t_r[k]), f"step {step}: {k} differs from the uninterrupted run"
    from safetensors.torch import load_file

    a = load_file(str(ref / "diffumatting_green_lora.safetensors"))
    b = load_file(str(killed / "diffumatting_green_lora.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------------------------
# the CLI on a real checkpoint file


@pytest.mark.slow
def test_cli_trains_one_step_on_full_size_checkpoint(comfy, random_sd15_checkpoint, tmp_path):
    from diffumatting.synthetic import write_synthetic_folder

    ckpt = comfy.folder_paths.get_full_path_or_raise("checkpoints", random_sd15_checkpoint)
    data = tmp_path / "data"
    write_synthetic_folder(data, 2, 128, seed=0, caption="a toy")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffumatting", "train", "--checkpoint", ckpt, "--data", str(data), "--out", str(out),
           "--cpu", "--steps", "1", "--resolution", "128", "--rank", "4", "--conv-rank", "4", "--no-progress"]
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), env=dict(os.environ), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lora = out / "diffumatting_green_lora.safetensors"
    assert lora.is_file() and "steps: 1" in proc.stdout
    import comfy.utils

    sd = comfy.utils.load_torch_file(str(lora), safe_load=True)
    assert any(k.startswith("lora_unet_output_blocks_") for k in sd)


def test_unloadable_checkpoint_files_are_one_line_errors(comfy, tmp_path):
    """#19 report T1 (a pickle .ckpt), report T2 (a text file named .safetensors), report T3 (a truncated file),
    with ComfyUI's own loader: one line naming --checkpoint each."""
    import pickle

    from safetensors.torch import save_file

    from diffumatting.comfy_bootstrap import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    text = tmp_path / "text.safetensors"
    text.write_text("not a model\n" * 100)
    full = tmp_path / "full.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(100_000)}, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:4096])
    for path in (evil, text, cut):
        with pytest.raises(ValueError) as err:
            load_checkpoint(path, what="--checkpoint")
        msg = str(err.value)
        assert msg.startswith(f"--checkpoint: {path} could not be loaded") and "\n" not in msg, msg
