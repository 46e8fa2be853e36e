"""DiffuMattingLoader and MattingHeadDecode in a real ComfyUI: shapes, ranges, tiling, LoRA, error messages."""

from __future__ import annotations

import pytest
import torch



def _mh(comfy, sub: str):
    """The pack's matting_head.<sub> module as ComfyUI loaded it."""
    import importlib

    return importlib.import_module(f"{comfy.pack.__name__}.matting_head.{sub}")


def _save_head_for(comfy, vae, name: str, seed: int = 0) -> str:
    """A matting head for this VAE's decoder (random, perturbed so its correction is not zero) in models/diffumatting."""
    spec = _mh(comfy, "taps").tap_spec(vae.first_stage_model)
    head = _mh(comfy, "network").MattingHead(spec.channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.stage1[-1].parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    _mh(comfy, "weights").save_head(comfy.models_dir / "diffumatting" / name, head,
                                    {**spec.info(), "name": f"test-{name}"}, {"steps": 0})
    return name


@pytest.fixture(scope="module")
def heads(comfy, tiny_sd15, tiny_sdxl):
    return {"sd15": _save_head_for(comfy, tiny_sd15.vae, "head_tiny_sd15.safetensors", 1),
            "sdxl": _save_head_for(comfy, tiny_sdxl.vae, "head_tiny_sdxl.safetensors", 2)}


def decode_prompt(family: str, head_name: str, width=64, height=48, batch=2, tiled=False, tile=512, overlap=128,
                  latent_from_image=False, key="auto", key_socket=None):
    p = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": family}},
         "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": head_name}}}
    if latent_from_image:
        p["img"] = {"class_type": "DMTestImage", "inputs": {"width": width, "height": height, "batch": batch,
                                                           "kind": "greenscreen"}}
        p["lat"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["m", 2]}}
    else:
        p["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}}
    p["dec"] = {"class_type": "DiffuMattingMattingHeadDecode", "inputs": {
        "samples": ["lat", 0], "vae": ["m", 2], "head": ["load", 0], "key_colour": key, "tiled": tiled,
        "tile_size": tile, "overlap": overlap}}
    if key_socket is not None:
        p["kc"] = {"class_type": "DiffuMattingKeyColour", "inputs": {"key_colour": "custom hex", "key_hex": key_socket}}
        p["dec"]["inputs"]["key"] = ["kc", 0]
    for i, name in enumerate(("image", "alpha", "fg", "mask", "key")):
        p[f"cap_{name}"] = {"class_type": "DMTestCapture", "inputs": {"value": ["dec", i], "key": name}}
    return p


def test_decode_key_socket_wins_and_the_key_output_says_what_was_used(run_prompt, heads):
    """A connected key is what the head keys with (same alpha as the widget set to that colour); the 'key' output
    carries it, or the estimate under 'auto', one per image."""
    widget = run_prompt(decode_prompt("sd15", heads["sd15"], latent_from_image=True, key="#00B140"))
    socket = run_prompt(decode_prompt("sd15", heads["sd15"], latent_from_image=True, key="pure green #00FF00",
                                      key_socket="#00B140"))
    assert torch.equal(widget["alpha"], socket["alpha"])
    assert [k.hex for k in socket["key"]] == ["#00b140"] * 2 and socket["key"][0].source == "hex"
    auto = run_prompt(decode_prompt("sd15", heads["sd15"], latent_from_image=True, key="auto"))
    assert len(auto["key"]) == 2 and all(k.source in ("estimated", "default") for k in auto["key"])
    assert widget["key"][0].source == "hex"  # an older workflow's hex value in the combo still works


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_decode_shapes_and_ranges_tiny(run_prompt, heads, family):
    out = run_prompt(decode_prompt(family, heads[family], latent_from_image=True))
    image, alpha, fg, mask = out["image"], out["alpha"], out["fg"], out["mask"]
    assert image.shape == (2, 48, 64, 3) and fg.shape == (2, 48, 64, 3)
    assert alpha.shape == (2, 48, 64) and mask.shape == (2, 48, 64)
    for t in (image, alpha, fg, mask):
        assert t.dtype == torch.float32 and torch.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
    assert torch.allclose(mask, 1 - alpha)
    assert alpha.std() > 0  # not a constant


def test_image_output_equals_core_vae_decode(run_prompt, heads):
    p = decode_prompt("sd15", heads["sd15"], latent_from_image=True, batch=1)
    p["plain"] = {"class_type": "VAEDecode", "inputs": {"samples": ["lat", 0], "vae": ["m", 2]}}
    p["cap_plain"] = {"class_type": "DMTestCapture", "inputs": {"value": ["plain", 0], "key": "plain"}}
    out = run_prompt(p)
    assert torch.allclose(out["image"], out["plain"], atol=1e-4)


def test_tiled_matches_untiled(run_prompt, heads):
    """Tiled decode (128 px tiles, 64 px overlap) vs untiled on a 256x192 image.

    The KL decoder is not local (its mid block attends over the whole latent), so no tiling is exact. Stated
    tolerance: our tiled image deviates from the untiled one by at most 1.5x what ComfyUI's own VAEDecodeTiled
    (same tile size) deviates, plus 0.005; the alpha's mean deviation is at most max(0.02, 2x that of the image)."""
    base = run_prompt(decode_prompt("sd15", heads["sd15"], 256, 192, 1, latent_from_image=True, key="green"))
    p = decode_prompt("sd15", heads["sd15"], 256, 192, 1, tiled=True, tile=128, overlap=64, latent_from_image=True,
                      key="green")
    p["core"] = {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["lat", 0], "vae": ["m", 2], "tile_size": 128,
                                                            "overlap": 64, "temporal_size": 64, "temporal_overlap": 8}}
    p["cap_core"] = {"class_type": "DMTestCapture", "inputs": {"value": ["core", 0], "key": "core"}}
    tiled = run_prompt(p)
    core_dev = (tiled["core"] - base["image"]).abs().mean().item()
    img_dev = (tiled["image"] - base["image"]).abs().mean().item()
    alpha_dev = (tiled["alpha"] - base["alpha"]).abs().mean().item()
    assert img_dev <= 1.5 * core_dev + 0.005, (img_dev, core_dev)
    assert alpha_dev <= max(0.02, 2 * img_dev), (alpha_dev, img_dev)
    assert tiled["alpha"].shape == base["alpha"].shape and torch.isfinite(tiled["alpha"]).all()


def test_batch_is_processed_per_item_consistently(run_prompt, heads):
    two = run_prompt(decode_prompt("sd15", heads["sd15"], 64, 64, 2, latent_from_image=True, key="green"))
    one = run_prompt(decode_prompt("sd15", heads["sd15"], 64, 64, 1, latent_from_image=True, key="green"))
    assert torch.allclose(two["alpha"][:1], one["alpha"], atol=2e-3)


def test_head_for_another_vae_is_a_clear_error(run_prompt, comfy, heads, tiny_sdxl):
    res = run_prompt(decode_prompt("sdxl", heads["sd15"]), expect_error=True)
    msg = str(res.get("execution_error", res))
    assert "different decoder weights" in msg or "trained on" in msg, msg


def test_taesd_head_on_kl_vae_is_a_clear_error(run_prompt, comfy, heads):
    ae = _mh(comfy, "taesd").random_tiny_autoencoder(4, 8)
    spec = _mh(comfy, "taps").tap_spec(ae.decoder)
    head = _mh(comfy, "network").MattingHead(spec.channels)
    _mh(comfy, "weights").save_head(comfy.models_dir / "diffumatting" / "head_taesd.safetensors", head,
                                    {**spec.info(), "name": "taesd"})
    res = run_prompt(decode_prompt("sd15", "head_taesd.safetensors"), expect_error=True)
    msg = str(res.get("execution_error", res))
    assert "trained on a taesd decoder" in msg and "autoencoderkl" in msg, msg


def test_loader_lists_files(comfy, heads):
    info = comfy.node_classes["DiffuMattingLoader"].GET_NODE_INFO_V1()
    options = info["input"]["required"]["head_name"][0]
    options = options if isinstance(options, list) else info["input"]["required"]["head_name"][1]["options"]
    assert heads["sd15"] in options and heads["sdxl"] in options


def _loader_error(run_prompt, name: str) -> str:
    p = {"load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": name}},
         "cap": {"class_type": "DMTestCapture", "inputs": {"value": ["load", 0], "key": "head"}}}
    res = run_prompt(p, expect_error=True)
    return str(res)


def test_loader_errors_corrupt_foreign_and_missing(run_prompt, comfy, heads):
    folder = comfy.models_dir / "diffumatting"
    (folder / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    msg = _loader_error(run_prompt, "corrupt.safetensors")
    assert "corrupt.safetensors" in msg and "corrupt" in msg, msg

    import safetensors.torch

    safetensors.torch.save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 1)}, str(folder / "a_lora.safetensors"))
    msg = _loader_error(run_prompt, "a_lora.safetensors")
    assert "not a DiffuMatting matting head" in msg, msg

    gone = folder / "gone.safetensors"
    gone.write_bytes((folder / heads["sd15"]).read_bytes())
    comfy.folder_paths.get_filename_list("diffumatting")  # listed...
    gone.unlink()  # ...then removed before running
    msg = _loader_error(run_prompt, "gone.safetensors")
    assert "gone.safetensors" in msg and ("not found" in msg or "not in list" in msg.lower() or "Value not" in msg), msg


@pytest.fixture(scope="module")
def head_lora(comfy, tiny_sd15):
    import safetensors.torch
    from comfy import lora as comfy_lora

    key_map = comfy_lora.model_lora_keys_unet(tiny_sd15.model.model, {})
    sd = tiny_sd15.model.model.state_dict()
    tensors, gen = {}, torch.Generator().manual_seed(9)
    for lora_key, weight_key in key_map.items():
        if isinstance(lora_key, str) and lora_key.startswith("lora_unet_") and "attn1_to_k" in lora_key:
            w = sd[weight_key]
            tensors[f"{lora_key}.lora_up.weight"] = torch.randn(w.shape[0], 2, generator=gen)
            tensors[f"{lora_key}.lora_down.weight"] = torch.randn(2, w.shape[1], generator=gen)
            tensors[f"{lora_key}.alpha"] = torch.tensor(2.0)
    assert tensors
    name = "green_canvas_lora.safetensors"
    safetensors.torch.save_file(tensors, str(comfy.models_dir / "diffumatting" / name))
    wrong = "wrong_lora.safetensors"
    safetensors.torch.save_file({"lora_unet_nothing_here.lora_up.weight": torch.zeros(4, 2),
                                 "lora_unet_nothing_here.lora_down.weight": torch.zeros(2, 4)},
                                str(comfy.models_dir / "diffumatting" / wrong))
    n_weights = len({key_map[k.rsplit(".", 2)[0]] for k in tensors})
    return name, wrong, n_weights


def test_loader_applies_lora_to_model(run_prompt, heads, head_lora):
    name, _, n_keys = head_lora
    p = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
         "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": heads["sd15"], "model": ["m", 0],
                                                                 "lora_name": name, "lora_strength": 0.7}},
         "cap_m": {"class_type": "DMTestCapture", "inputs": {"value": ["load", 1], "key": "model"}},
         "cap_src": {"class_type": "DMTestCapture", "inputs": {"value": ["m", 0], "key": "src"}}}
    out = run_prompt(p)
    patched, src = out["model"], out["src"]
    assert patched is not src
    assert len(patched.patches) >= n_keys and len(patched.patches) > len(src.patches)
    strengths = {entry[0] for plist in patched.patches.values() for entry in plist}
    assert 0.7 in strengths


def test_loader_lora_errors(run_prompt, heads, head_lora):
    _, wrong, _ = head_lora
    p = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
         "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": heads["sd15"], "model": ["m", 0],
                                                                 "lora_name": wrong, "lora_strength": 1.0}},
         "cap": {"class_type": "DMTestCapture", "inputs": {"value": ["load", 1], "key": "model"}}}
    msg = str(run_prompt(p, expect_error=True))
    assert "no weights for this MODEL" in msg, msg
    p["load"]["inputs"].pop("model")
    p["load"]["inputs"]["lora_name"] = head_lora[0]
    msg = str(run_prompt(p, expect_error=True))
    assert "no MODEL is connected" in msg, msg


@pytest.mark.slow
def test_full_size_random_sd15_vae(run_prompt, comfy, random_sd15_checkpoint):
    """Full-size SD1.5 VAE (random weights; SDXL's VAE has the same architecture): shapes, ranges, tiled path."""
    import comfy.sd as comfy_sd  # noqa: F401

    ckpt = comfy.nodes.CheckpointLoaderSimple().load_checkpoint(random_sd15_checkpoint)
    vae = ckpt[2]
    name = _save_head_for(comfy, vae, "head_full_sd15.safetensors", 3)
    p = {"ck": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": random_sd15_checkpoint}},
         "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": name}},
         "img": {"class_type": "DMTestImage", "inputs": {"width": 128, "height": 96, "batch": 1, "kind": "greenscreen"}},
         "lat": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ck", 2]}}}
    for tag, tiled in (("u", False), ("t", True)):
        p[f"dec{tag}"] = {"class_type": "DiffuMattingMattingHeadDecode", "inputs": {
            "samples": ["lat", 0], "vae": ["ck", 2], "head": ["load", 0], "key_colour": "green", "tiled": tiled,
            "tile_size": 128, "overlap": 64}}
        p[f"cap_a{tag}"] = {"class_type": "DMTestCapture", "inputs": {"value": [f"dec{tag}", 1], "key": f"alpha_{tag}"}}
        p[f"cap_i{tag}"] = {"class_type": "DMTestCapture", "inputs": {"value": [f"dec{tag}", 0], "key": f"image_{tag}"}}
    out = run_prompt(p)
    assert out["image_u"].shape == (1, 96, 128, 3) and out["alpha_u"].shape == (1, 96, 128)
    for k in ("alpha_u", "alpha_t", "image_u"):
        assert torch.isfinite(out[k]).all() and out[k].min() >= 0 and out[k].max() <= 1
    d = (out["alpha_u"] - out["alpha_t"]).abs()
    assert d.mean() < 0.02, d.mean().item()


@pytest.mark.slow
def test_train_head_on_comfyui_vae(comfy, random_sd15_checkpoint, tmp_path):
    """train-head's ComfyUI backend: one step on the full-size random SD1.5 VAE; the head fits that VAE."""
    from diffumatting.cli.commands.train_head import _comfy_backend
    from diffumatting.synthetic import synthetic_matte
    from diffumatting.trainer.head import TrainConfig, train_head
    from diffumatting.trainer.pairs import Pair
    from diffumatting.matting_head.weights import check_compatible, load_head

    ckpt = comfy.folder_paths.get_full_path("checkpoints", random_sd15_checkpoint)
    backend = _comfy_backend(ckpt)
    assert backend.info()["family"] == "autoencoderkl" and backend.info()["tap_channels"] == [512, 512, 256, 128]
    fg, a = synthetic_matte(64, 1, "fine")
    cfg = TrainConfig(out=str(tmp_path / "kl_head.safetensors"), steps=1, batch=1, crop=64, buffer=2, buffer_init=1,
                      ckpt_every=1, head_config={"width_8": 16, "width_16": 16, "width_32": 16})
    out = train_head(backend, [Pair("blob", fg, a)], cfg, progress=False, log_fn=lambda *_: None)
    head, meta = load_head(out)
    check_compatible(meta, backend.spec.info())
    assert meta["decoder_family"] == "autoencoderkl" and meta["training"]["steps"] == 1


# ------------------------------------------------------------------------------------------------------------------
# bad latents (#19 N7, N8): a clear error naming `samples`, not a torch message or one naming `image`


class DMTestBadLatent:
    """A LATENT the core nodes cannot make: an empty batch, a NaN value or a 1e30 value."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["empty", "nan", "huge", "fine"], {}), "width": ("INT", {"default": 8})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, kind, width):
        z = torch.zeros(0 if kind == "empty" else 1, 4, width, width)
        if kind == "nan":
            z[0, 1, 2, 3] = float("nan")
        elif kind == "huge":
            z[0, 0, 0, 0] = 1e30
        return ({"samples": z},)


@pytest.fixture()
def bad_latent_node(comfy):
    comfy.nodes.NODE_CLASS_MAPPINGS["DMTestBadLatent"] = DMTestBadLatent
    yield "DMTestBadLatent"
    comfy.nodes.NODE_CLASS_MAPPINGS.pop("DMTestBadLatent", None)


def _bad_latent_prompt(head_name: str, kind: str, key: str = "chroma green #00B140") -> dict:
    p = decode_prompt("sd15", head_name, key=key)
    p["lat"] = {"class_type": "DMTestBadLatent", "inputs": {"kind": kind, "width": 8}}
    return p


@pytest.mark.parametrize("kind, words", [("empty", "empty"), ("nan", "NaN or infinite"), ("huge", "1e+30")])
def test_bad_latent_is_a_clear_error_naming_samples(run_prompt, heads, bad_latent_node, kind, words):
    res = run_prompt(_bad_latent_prompt(heads["sd15"], kind), expect_error=True)
    err = res["execution_error"]
    msg = err["exception_message"]
    assert err["exception_type"].endswith("ValueError"), err
    assert msg.startswith("samples:") and words in msg, msg
    assert "torch" not in msg and "image:" not in msg, msg


def test_a_fine_latent_from_the_same_node_decodes(run_prompt, heads, bad_latent_node):
    """The bad-latent node itself is not the problem: with ordinary values the same prompt runs."""
    out = run_prompt(_bad_latent_prompt(heads["sd15"], "fine"))
    assert out["alpha"].shape == (1, 64, 64) and torch.isfinite(out["alpha"]).all()


def test_old_saved_key_values_still_validate_and_mean_the_same(run_prompt, heads):
    """MattingHeadDecode's key_colour was free text before it became a combo: what old workflows stored there
    ("pure_green", "green", a hex) validates and keys exactly as the labelled preset does."""
    ref = run_prompt(decode_prompt("sd15", heads["sd15"], batch=1, latent_from_image=True, key="pure green #00FF00"))
    for old in ("pure_green", "#00ff00", "0,255,0"):
        out = run_prompt(decode_prompt("sd15", heads["sd15"], batch=1, latent_from_image=True, key=old))
        assert torch.equal(out["alpha"], ref["alpha"]), old
        assert out["key"][0].hex == "#00ff00", old
    green = run_prompt(decode_prompt("sd15", heads["sd15"], batch=1, latent_from_image=True, key="green"))
    assert green["key"][0].preset == "chroma_green"
    bad = run_prompt(decode_prompt("sd15", heads["sd15"], batch=1, key="chartreuse-ish"), expect_error=True)
    assert "chartreuse-ish" in str(bad)


def test_default_key_is_greencontrols_default(comfy):
    """One canvas, one key colour even unwired: MattingHeadDecode's default is GreenControlSampler's canvas."""
    dec = comfy.node_classes["DiffuMattingMattingHeadDecode"].INPUT_TYPES()["required"]["key_colour"][1]
    gc = comfy.node_classes["DiffuMattingGreenControlSampler"].INPUT_TYPES()["required"]["key_colour"][1]
    assert dec["default"] == gc["default"] == "chroma green #00B140"
