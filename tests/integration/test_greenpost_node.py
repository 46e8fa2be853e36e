"""GreenPost node (DiffuMattingGreenPost) inside a real ComfyUI: outputs, polarity, batches, given alpha, errors."""

from __future__ import annotations

import torch

from diffumatting.greenpost import green_post

DEFAULTS = {"key_colour": "auto", "key_hex": "#00B140", "share_key_across_batch": True, "clip_black": 0.0,
            "clip_white": 1.0, "despill": 1.0, "preserve_luminance": 0.0, "refine_radius": 4, "high_quality": False}


def _img(node_id, w=96, h=64, batch=1, kind="greenscreen"):
    return {node_id: {"class_type": "DMTestImage", "inputs": {"width": w, "height": h, "batch": batch, "kind": kind}}}


def _capture(node_id, src, key):
    return {node_id: {"class_type": "DMTestCapture", "inputs": {"value": src, "key": key}}}


def _greenpost(node_id, image, alpha=None, **kw):
    """The node with its defaults, keying classically unless ``keyer`` says otherwise (``keyer=None``: no keyer
    input at all, as in a workflow saved before it existed)."""
    inputs = {"image": image, **DEFAULTS, "keyer": "classical", **kw}
    if inputs["keyer"] is None:
        del inputs["keyer"]
    if alpha is not None:
        inputs["alpha"] = alpha
    return {node_id: {"class_type": "DiffuMattingGreenPost", "inputs": inputs}}


def test_node_is_registered_with_its_schema(comfy):
    cls = comfy.node_classes["DiffuMattingGreenPost"]
    info = cls.INPUT_TYPES()
    assert {"image", "key_colour", "despill"} <= set(info["required"]) and "alpha" in info["optional"]
    assert tuple(cls.RETURN_NAMES) == ("fg", "alpha", "mask", "rgba", "spill", "key")
    assert tuple(cls.RETURN_TYPES) == ("IMAGE", "MASK", "MASK", "IMAGE", "MASK", "DIFFUMATTING_KEY_COLOUR")
    assert cls.CATEGORY == "DiffuMatting/keying"
    for name, value in DEFAULTS.items():  # the prompts below use the node's own defaults
        assert info["required"][name][1].get("default") == value, name


def test_node_outputs_and_polarity_in_a_workflow(comfy, run_prompt):
    prompt = {**_img("1", batch=3), **_greenpost("2", ["1", 0]),
              **_capture("3", ["2", 0], "fg"), **_capture("4", ["2", 1], "alpha"), **_capture("5", ["2", 2], "mask"),
              **_capture("6", ["2", 3], "rgba"), **_capture("7", ["2", 4], "spill"),
              **_capture("8", ["1", 0], "image"), **_capture("9", ["1", 1], "true_alpha")}
    out = run_prompt(prompt)
    assert out["fg"].shape == (3, 64, 96, 3) and out["rgba"].shape == (3, 64, 96, 4)
    assert out["alpha"].shape == out["mask"].shape == out["spill"].shape == (3, 64, 96)
    for key in ("fg", "alpha", "mask", "rgba", "spill"):
        t = out[key]
        assert torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1, key
    assert torch.allclose(out["mask"], 1 - out["alpha"])  # ComfyUI polarity: 1 = transparent
    assert torch.equal(out["rgba"][..., 3], out["alpha"]) and torch.equal(out["rgba"][..., :3], out["fg"])
    # the test image's true matte is recovered: opaque centre, transparent corners (its striped magenta-to-blue
    # disc with a 3 px soft edge is hard for any colour-difference key, hence the loose bound)
    assert ((out["alpha"] - out["true_alpha"]) ** 2).mean() < 6e-3
    assert out["alpha"][:, 32, 48].min() > 0.98 and out["alpha"][:, 2, 2].max() < 0.02
    # the node is the core with the same options (one shared key for the batch)
    core = green_post(out["image"].movedim(-1, 1), share_key=True)
    assert torch.allclose(out["alpha"], core.alpha[:, 0], atol=1e-5)


def test_node_keeps_a_given_alpha_and_accepts_a_hex_key(comfy, run_prompt):
    prompt = {**_img("1", batch=2), **_greenpost("2", ["1", 0], alpha=["1", 1], key_colour="custom hex",
                                                 key_hex="#00B040"),
              **_capture("3", ["2", 1], "alpha"), **_capture("4", ["1", 1], "given")}
    out = run_prompt(prompt)
    inside = out["given"] > 0.05
    assert torch.equal(out["alpha"][inside], out["given"][inside])


def test_node_refuses_a_mismatched_alpha(comfy, run_prompt):
    prompt = {**_img("1", w=96, h=64), **_img("9", w=32, h=32), **_greenpost("2", ["1", 0], alpha=["9", 1]),
              **_capture("3", ["2", 1], "alpha")}
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert "alpha" in err["exception_message"] and "must match" in err["exception_message"]


def test_node_with_an_image_without_key_colour_gives_opaque(comfy, run_prompt):
    # ComfyUI's own EmptyImage: a flat grey picture has no key colour -> defined, fully opaque result, no NaN
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2,
                                                           "color": 0x808080}},
              **_greenpost("2", ["1", 0]), **_capture("3", ["2", 1], "alpha"), **_capture("4", ["2", 0], "fg"),
              **_capture("5", ["1", 0], "image")}
    out = run_prompt(prompt)
    assert torch.isfinite(out["alpha"]).all() and out["alpha"].min() == 1.0
    assert torch.allclose(out["fg"], out["image"])


# ------------------------------------------------------------------------------------------------------------------
# the key colour: presets that say what they are, older values, the socket in and out


def _keycolour(node_id, key_colour, key_hex="#00B140", image=None):
    inputs = {"key_colour": key_colour, "key_hex": key_hex}
    if image is not None:
        inputs["image"] = image
    return {node_id: {"class_type": "DiffuMattingKeyColour", "inputs": inputs}}


def test_key_combo_shows_what_each_preset_is(comfy):
    options = comfy.node_classes["DiffuMattingGreenPost"].INPUT_TYPES()["required"]["key_colour"][1]["options"]
    assert options[0] == "auto" and options[-1] == "custom hex"
    assert "chroma green #00B140" in options and "pure green #00FF00" in options and "chroma blue #0047BB" in options


def test_older_key_values_still_validate_and_mean_the_same(comfy, run_prompt):
    """Workflows saved before the presets had labels stored "green" / a hex in key_colour: same result."""
    outs = {}
    for value in ("green", "chroma_green", "chroma green #00B140", "#00B140"):
        prompt = {**_img("1"), **_greenpost("2", ["1", 0], key_colour=value), **_capture("3", ["2", 1], "alpha"),
                  **_capture("4", ["2", 5], "key")}
        outs[value] = run_prompt(prompt)
    ref = outs["chroma green #00B140"]
    assert ref["key"][0].preset == "chroma_green"
    for value, out in outs.items():
        assert torch.equal(out["alpha"], ref["alpha"]), value
        assert out["key"][0].hex == "#00b140", value
    bad = {**_img("1"), **_greenpost("2", ["1", 0], key_colour="chartreuse-ish"), **_capture("3", ["2", 1], "alpha")}
    err = run_prompt(bad, expect_error=True)
    assert "chartreuse-ish" in str(err)


def test_connected_key_wins_and_the_key_output_says_what_was_used(comfy, run_prompt):
    prompt = {**_img("1", batch=2), **_keycolour("5", "custom hex", "#00B040"),
              **_greenpost("2", ["1", 0], key_colour="pure green #00FF00", key=["5", 0]),
              **_greenpost("6", ["1", 0], key_colour="custom hex", key_hex="#00B040"),
              **_greenpost("7", ["1", 0]),
              **_capture("3", ["2", 1], "alpha"), **_capture("4", ["2", 5], "key"),
              **_capture("8", ["6", 1], "alpha_hex"), **_capture("9", ["7", 5], "auto_key")}
    out = run_prompt(prompt)
    assert torch.equal(out["alpha"], out["alpha_hex"])  # the socket's colour, not the widget's pure green
    assert [k.hex for k in out["key"]] == ["#00b040", "#00b040"] and out["key"][0].source == "hex"
    assert len(out["auto_key"]) == 2 and all(k.source == "estimated" for k in out["auto_key"])


def test_keycolour_node_estimates_from_an_image_and_refuses_auto_without_one(comfy, run_prompt):
    out = run_prompt({**_img("1", batch=2), **_keycolour("2", "auto", image=["1", 0]), **_capture("3", ["2", 0], "k")})
    assert len(out["k"]) == 2 and out["k"][0] == out["k"][1] and out["k"][0].source == "estimated"
    assert out["k"][0].word == "green"
    err = run_prompt({**_keycolour("2", "auto"), **_capture("3", ["2", 0], "k")}, expect_error=True)
    assert "connect one" in err["execution_error"]["exception_message"]


class DMTestEmptyImage:
    """An IMAGE batch of 0 images (what a filter or a batch slice can hand on); the core nodes make none."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"batch": ("INT", {"default": 0, "min": 0, "max": 2})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, batch):
        return (torch.rand(batch, 64, 64, 3),)


def test_node_with_an_empty_batch_is_a_clear_error(comfy, run_prompt):
    """#19 N1: an empty batch is a ValueError naming image, not torch.cat's message."""
    comfy.nodes.NODE_CLASS_MAPPINGS["DMTestEmptyImage"] = DMTestEmptyImage
    try:
        prompt = {"1": {"class_type": "DMTestEmptyImage", "inputs": {"batch": 0}}, **_greenpost("2", ["1", 0]),
                  **_capture("3", ["2", 1], "alpha")}
        err = run_prompt(prompt, expect_error=True)["execution_error"]
        assert err["exception_type"].endswith("ValueError"), err
        assert err["exception_message"].startswith("image:") and "empty" in err["exception_message"], err
        assert "torch" not in err["exception_message"]
        prompt["1"]["inputs"]["batch"] = 1  # the same graph with one image runs
        assert run_prompt(prompt)["alpha"].shape == (1, 64, 64)
    finally:
        comfy.nodes.NODE_CLASS_MAPPINGS.pop("DMTestEmptyImage", None)


def _refine_module(comfy):
    """The pack's matting_head.refine as ComfyUI loaded it (the module the node calls)."""
    import sys

    node_module = sys.modules[comfy.node_classes["DiffuMattingGreenPost"].__module__]
    return sys.modules[node_module.resolve_keyer.__module__]


def test_node_keyer_modes_learned_default_classical_and_bad_weights(comfy, run_prompt, monkeypatch, tmp_path):
    """No 'keyer' input (every workflow saved before it existed) = 'classical' = GreenPost alone; 'learned' runs the
    shipped keyer; 'learned' with an unusable file is an error naming it, 'auto' falls back to classical."""
    import pytest

    refine = _refine_module(comfy)
    if not refine.KEYER_FILE.is_file():
        pytest.skip(f"no shipped keyer at {refine.KEYER_FILE}")
    prompt = {**_img("1", batch=2), **_greenpost("2", ["1", 0], keyer="learned"),
              **_greenpost("3", ["1", 0], keyer=None),
              **_capture("4", ["2", 1], "learned"), **_capture("5", ["3", 1], "classical"),
              **_capture("6", ["1", 0], "image")}
    out = run_prompt(prompt)
    image = out["image"].movedim(-1, 1)
    core = green_post(image, share_key=True)
    assert torch.allclose(out["classical"], core.alpha[:, 0], atol=1e-5)
    expect = refine.key_image(image, refine.load_keyer(), key_colour=core.key_colour)  # a tensor: the pack is imported twice
    assert torch.allclose(out["learned"], expect.alpha[:, 0], atol=1e-4)
    assert not torch.allclose(out["learned"], out["classical"], atol=1e-3)  # the keyer did something
    bad = tmp_path / "corrupt_keyer.safetensors"
    bad.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(refine, "KEYER_FILE", bad)
    err = run_prompt({**_img("1"), **_greenpost("2", ["1", 0], keyer="learned"), **_capture("3", ["2", 1], "a")},
                     expect_error=True)["execution_error"]
    assert "corrupt_keyer.safetensors" in err["exception_message"]
    with pytest.warns(refine.KeyerWarning, match="corrupt_keyer.safetensors"):
        out = run_prompt({**_img("1"), **_greenpost("2", ["1", 0], keyer="auto"), **_capture("3", ["2", 1], "a"),
                          **_capture("4", ["1", 0], "image")})
    assert torch.allclose(out["a"], green_post(out["image"].movedim(-1, 1)).alpha[:, 0], atol=1e-5)
