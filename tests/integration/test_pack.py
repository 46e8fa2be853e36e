"""The pack inside a real ComfyUI: import, node-info contract, model folder, and end-to-end sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

DESIGN_NODES = {"DiffuMattingLoader", "DiffuMattingGreenControl", "DiffuMattingGreenControlSampler",
                "DiffuMattingMattingHeadDecode", "DiffuMattingGreenPost", "DiffuMattingAlphaComposite"}


def pack_node_ids(comfy) -> list[str]:
    """Ids of the nodes ComfyUI's loader registered from this pack (it tags them with the pack's module)."""
    module = f"custom_nodes.{REPO_ROOT.name}"
    return sorted(node_id for node_id, cls in comfy.node_classes.items()
                  if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == module)


def test_pack_registers_the_design_nodes(comfy):
    ids = set(pack_node_ids(comfy))
    missing = DESIGN_NODES - ids
    assert not missing, f"nodes missing from ComfyUI's registry: {sorted(missing)}"


def test_node_info_contract(comfy):
    """Display name, category under DiffuMatting/, prefixed id, tooltip on every input and output."""
    ids = pack_node_ids(comfy)
    assert ids, "the pack registered no nodes"
    problems = []
    for node_id in ids:
        cls = comfy.node_classes[node_id]
        info = cls.GET_NODE_INFO_V1()
        if not node_id.startswith("DiffuMatting"):
            problems.append(f"{node_id}: id is not prefixed 'DiffuMatting'")
        if node_id in comfy.core_ids:
            problems.append(f"{node_id}: clashes with a core node")
        if not info.get("display_name") or info["display_name"] == node_id and node_id != "DiffuMattingLoader":
            problems.append(f"{node_id}: no display name")
        if not str(info.get("category", "")).startswith("DiffuMatting/"):
            problems.append(f"{node_id}: category {info.get('category')!r} is not under DiffuMatting/")
        if not info.get("description"):
            problems.append(f"{node_id}: no description")
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not options.get("tooltip"):
                    problems.append(f"{node_id}: input {name!r} has no tooltip")
        tooltips = info.get("output_tooltips") or []
        for i, name in enumerate(info.get("output_name", [])):
            if i >= len(tooltips) or not tooltips[i]:
                problems.append(f"{node_id}: output {name!r} has no tooltip")
        if info.get("python_module", "").split(".")[0] != "custom_nodes":
            problems.append(f"{node_id}: python_module {info.get('python_module')!r} is not the pack's")
    assert not problems, "\n".join(problems)


def test_model_folder_registered(comfy):
    paths, extensions = comfy.folder_paths.folder_names_and_paths["diffumatting"]
    assert any(p.replace("\\", "/").endswith("models/diffumatting") for p in paths)
    assert ".safetensors" in extensions


def test_model_folder_respects_user_entry(comfy, tmp_path):
    """A user's extra_model_paths.yaml entry (empty extension set) is kept and restricted to model files."""
    fp = comfy.folder_paths
    saved = fp.folder_names_and_paths.pop("diffumatting")
    try:
        fp.folder_names_and_paths["diffumatting"] = ([str(tmp_path)], set())
        comfy.pack.register_model_folder()
        paths, extensions = fp.folder_names_and_paths["diffumatting"]
        assert str(tmp_path) in paths and len(paths) == 2
        assert ".safetensors" in extensions
    finally:
        fp.folder_names_and_paths["diffumatting"] = saved


# GreenPost's widgets at their defaults: the end-to-end prompts below key what they decoded with a pack node
GREENPOST = {"key_colour": "auto", "key_hex": "#00B140", "share_key_across_batch": True, "clip_black": 0.0,
             "clip_white": 1.0, "despill": 1.0, "preserve_luminance": 0.0, "refine_radius": 4, "high_quality": False}


def _check_keyed(out: dict, batch: int, size: int) -> None:
    """The decoded image went through the pack's GreenPost: straight fg + alpha of the same size, in range; where
    the keyer found no screen (random weights rarely paint one) the result is the defined opaque one."""
    image, fg, alpha = out["image"], out["fg"], out["alpha"]
    assert tuple(image.shape) == (batch, size, size, 3) and tuple(alpha.shape) == (batch, size, size)
    assert image.isfinite().all() and image.min() >= 0 and image.max() <= 1 and image.std() > 0
    assert alpha.isfinite().all() and alpha.min() >= 0 and alpha.max() <= 1
    for i in range(batch):
        if bool((alpha[i] == 1).all()):
            assert torch.equal(fg[i], image[i])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_end_to_end_tiny(run_prompt, family):
    """Empty latent -> KSampler -> VAE decode -> GreenPost on the tiny models, in-process through PromptExecutor."""
    prompt = {
        "1": {"class_type": "DMTestTinyModels", "inputs": {"family": family}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple on a green screen", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "DMTestCapture", "inputs": {"value": ["6", 0], "key": "image"}},
        "8": {"class_type": "DiffuMattingGreenPost", "inputs": {"image": ["6", 0], **GREENPOST}},
        "9": {"class_type": "DMTestCapture", "inputs": {"value": ["8", 0], "key": "fg"}},
        "10": {"class_type": "DMTestCapture", "inputs": {"value": ["8", 1], "key": "alpha"}},
    }
    _check_keyed(run_prompt(prompt), 2, 64)


@pytest.mark.slow
def test_end_to_end_full_size_sd15(run_prompt, random_sd15_checkpoint):
    """The full-size random SD1.5 checkpoint through CheckpointLoaderSimple (slow: ~1 min on 2 CPU cores)."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": random_sd15_checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat, isolated on a pure green screen background", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 1, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "DMTestCapture", "inputs": {"value": ["6", 0], "key": "image"}},
        "8": {"class_type": "DiffuMattingGreenPost", "inputs": {"image": ["6", 0], **GREENPOST}},
        "9": {"class_type": "DMTestCapture", "inputs": {"value": ["8", 0], "key": "fg"}},
        "10": {"class_type": "DMTestCapture", "inputs": {"value": ["8", 1], "key": "alpha"}},
    }
    _check_keyed(run_prompt(prompt), 1, 64)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_tiny_controlnet_in_the_chain(run_prompt, family):
    """The harness's tiny ControlNet works with ComfyUI's ControlNetApplyAdvanced (other suites build on it)."""
    prompt = {
        "1": {"class_type": "DMTestTinyModels", "inputs": {"family": family}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a vase, green screen", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": {"class_type": "DMTestImage", "inputs": {"width": 64, "height": 64, "batch": 1, "kind": "greenscreen"}},
        "9": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "control_net": ["1", 3], "image": ["8", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "5": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                   "positive": ["9", 0], "negative": ["9", 1], "latent_image": ["4", 0]}},
        "7": {"class_type": "DMTestCapture", "inputs": {"value": ["5", 0], "key": "latent"}},
    }
    samples = run_prompt(prompt)["latent"]["samples"]
    assert tuple(samples.shape) == (1, 4, 8, 8) and samples.isfinite().all()
