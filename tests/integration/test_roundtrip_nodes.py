"""Issue #20 in a real ComfyUI: ObjectOnCanvas reads LoadImage's RGBA PNG (image + mask = 1 - alpha) and RGBA
IMAGEs with the right polarity, GreenPost keys its canvas back with the alpha as guide, and GreenControl(Sampler)
pick an "auto" key colour from the subject text and say which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

H, W = 48, 64
GREENPOST = {"key_colour": "auto", "key_hex": "#00B140", "share_key_across_batch": True, "clip_black": 0.0,
             "clip_white": 1.0, "despill": 1.0, "preserve_luminance": 0.0, "refine_radius": 4, "high_quality": False}


def _capture(**values):
    return {f"cap_{k}": {"class_type": "DMTestCapture", "inputs": {"value": list(v), "key": k}}
            for k, v in values.items()}


def _rgba(green: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """-> (colour HxWx3, alpha HxW) float in [0,1]: a soft-edged ellipse, warm (or green) colours, 8-bit values."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = np.hypot((xx - W / 2) / (W * 0.3), (yy - H / 2) / (H * 0.3))
    alpha = np.clip((1 - r) / 0.25, 0, 1)
    stripes = 0.5 + 0.3 * np.sin(xx / 3)
    colour = (np.stack([0.2 * stripes, 0.7 * np.ones_like(xx), 0.15 * np.ones_like(xx)], -1) if green else
              np.stack([0.5 * stripes + 0.45, 0.35 * np.ones_like(xx), 0.3 * np.ones_like(xx)], -1))
    return np.round(colour * 255) / 255, np.round(alpha * 255) / 255


def _write_png(path: Path, colour: np.ndarray, alpha: np.ndarray | None) -> None:
    import cv2

    arr = colour[..., ::-1] if alpha is None else np.concatenate([colour[..., ::-1], alpha[..., None]], -1)
    assert cv2.imwrite(str(path), np.round(arr * 255).astype(np.uint8))


@pytest.fixture
def input_png(comfy):
    folder = Path(comfy.folder_paths.get_input_directory())
    folder.mkdir(parents=True, exist_ok=True)

    def make(name: str, green: bool = False, with_alpha: bool = True):
        colour, alpha = _rgba(green)
        _write_png(folder / name, colour, alpha if with_alpha else None)
        return name, torch.from_numpy(colour).float(), torch.from_numpy(alpha).float()

    return make


def _canvas_prompt(name: str, key_colour: str = "auto", rgba: bool = False) -> dict:
    canvas = {"key_colour": key_colour, "key_hex": "#FF00FF", "auto_from": "key presets",
              "share_key_across_batch": False}
    if rgba:  # ComfyUI's own JoinImageWithAlpha makes an RGBA IMAGE [B,H,W,4] from LoadImage's image + mask
        prompt = {"join": {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["load", 0], "alpha": ["load", 1]}}}
        canvas["image"] = ["join", 0]
    else:
        prompt = {}
        canvas.update(image=["load", 0], mask=["load", 1])
    return prompt | {
        "load": {"class_type": "LoadImage", "inputs": {"image": name}},
        "canvas": {"class_type": "DiffuMattingObjectOnCanvas", "inputs": canvas},
        "key": {"class_type": "DiffuMattingGreenPost", "inputs": {"image": ["canvas", 0], "key": ["canvas", 1],
                                                                   "guide": ["canvas", 2], **GREENPOST}},
    }


@pytest.mark.parametrize("rgba", [False, True], ids=["image+mask", "rgba-image"])
def test_an_rgba_png_goes_on_the_canvas_and_keys_back(comfy, run_prompt, input_png, rgba):
    name, colour, alpha = input_png("dm_rt_object.png")
    out = run_prompt(_canvas_prompt(name, rgba=rgba) | _capture(image=("canvas", 0), key=("canvas", 1),
                                                                alpha=("canvas", 2), fg=("key", 0),
                                                                keyed=("key", 1)))
    # polarity: LoadImage's mask is 1 - alpha; the node's alpha is the PNG's alpha (1 = opaque)
    torch.testing.assert_close(out["alpha"][0], alpha, atol=1e-6, rtol=0)
    key = out["key"][0]
    assert key.preset == "chroma_green"  # a warm object stays on green
    expected = alpha[..., None] * colour + (1 - alpha[..., None]) * key.tensor()
    torch.testing.assert_close(out["image"][0], expected, atol=1e-5, rtol=0)
    # keyed back with the alpha as guide: the object returns
    hard = (alpha == 0) | (alpha == 1)
    assert float((out["keyed"][0] - alpha).abs()[hard].max()) <= 1 / 255
    assert float((out["keyed"][0] - alpha).abs().max()) <= 0.02
    opaque = alpha == 1
    assert float((out["fg"][0] - colour).abs()[opaque].max()) <= 1 / 255


def test_auto_puts_a_green_object_on_magenta(comfy, run_prompt, input_png):
    name, _, alpha = input_png("dm_rt_green_object.png", green=True)
    out = run_prompt(_canvas_prompt(name) | _capture(key=("canvas", 1), keyed=("key", 1), keyed_key=("key", 5)))
    assert out["key"][0].preset == "magenta"
    assert out["keyed_key"][0].preset == "magenta"  # GreenPost keyed against the connected canvas colour
    assert float((out["keyed"][0] - alpha).abs().max()) <= 0.02


def test_a_connected_key_and_a_chosen_preset_win_over_auto(comfy, run_prompt, input_png):
    name, _, _ = input_png("dm_rt_object2.png", green=True)
    out = run_prompt(_canvas_prompt(name, key_colour="chroma blue #0047BB") | _capture(key=("canvas", 1)))
    assert out["key"][0].preset == "chroma_blue"
    prompt = _canvas_prompt(name)
    prompt["kc"] = {"class_type": "DiffuMattingKeyColour", "inputs": {"key_colour": "custom hex", "key_hex": "#20E020"}}
    prompt["canvas"]["inputs"]["key"] = ["kc", 0]
    out = run_prompt(prompt | _capture(key=("canvas", 1)))
    assert out["key"][0].hex == "#20e020"


def test_bad_object_inputs_name_the_input(comfy, run_prompt, input_png):
    name, _, _ = input_png("dm_rt_object3.png")
    both = _canvas_prompt(name)
    both["solid"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": W, "height": H}}
    both["canvas"]["inputs"]["alpha"] = ["solid", 0]
    err = run_prompt(both | _capture(a=("canvas", 2)), expect_error=True)
    assert "execution_error" in err, err
    err = err["execution_error"]
    assert "connect either alpha" in err["exception_message"]
    plain, _, _ = input_png("dm_rt_opaque.png", with_alpha=False)  # LoadImage: a 64x64 empty mask
    err = run_prompt(_canvas_prompt(plain) | _capture(a=("canvas", 2)), expect_error=True)["execution_error"]
    assert "without transparency" in err["exception_message"]
    none = _canvas_prompt(name)
    del none["canvas"]["inputs"]["mask"]
    err = run_prompt(none | _capture(a=("canvas", 2)), expect_error=True)["execution_error"]
    assert "alpha:" in err["exception_message"] and "RGBA" in err["exception_message"]
    guided = _canvas_prompt(name)
    guided["key"]["inputs"]["alpha"] = ["canvas", 2]
    err = run_prompt(guided | _capture(a=("key", 1)), expect_error=True)["execution_error"]
    assert "guide:" in err["exception_message"]


@pytest.mark.parametrize("node, slot", [("DiffuMattingGreenControlSampler", 2), ("DiffuMattingGreenControl", 3)])
def test_green_control_auto_key_colour_from_the_subject(comfy, run_prompt, node, slot):
    inputs = {"model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "subject": "a green frog", "negative": "",
              "key_colour": "auto", "strength": 0.8}
    if node == "DiffuMattingGreenControlSampler":
        inputs |= {"seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "width": 64,
                   "height": 64, "batch_size": 1}
    prompt = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
              "g": {"class_type": node, "inputs": inputs}} | _capture(key=("g", slot))
    out = run_prompt(prompt)
    assert out["key"][0].preset == "magenta"
    ui = out["_history"]["outputs"]["g"]
    assert any("magenta" in t and "frog" in t for t in ui["text"])
    prompt["g"]["inputs"]["subject"] = "a red apple"
    assert run_prompt(prompt)["key"][0].preset == "chroma_green"
