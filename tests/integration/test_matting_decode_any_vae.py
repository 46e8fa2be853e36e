"""MattingHeadDecode's choice of alpha model in a real ComfyUI (issue 15): the image-only keyer on the decoded image
for every VAE (SD1.5, SDXL and a Flux.2-style VAE built with ComfyUI's classes) when no decoder head is connected or
an image-only keyer file is loaded as the head; the decoder head where one is connected; the 'method' output says
which ran; an unusable keyer file is a clear error naming it."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

FLUX2_DDCONFIG = dict(double_z=True, z_channels=32, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4, 4],
                      num_res_blocks=1, attn_resolutions=[], dropout=0.0, batch_norm_latent=True)
_FLUX2: dict = {}


def flux2_style_vae():
    """A Flux.2-style VAE (32-ch AutoencoderKL + BatchNorm latent with 2x2 packing: 128-ch latents at 1/16) with
    random weights, built with ComfyUI's VAE class and the settings its loader gives a Flux.2 VAE file."""
    if "vae" not in _FLUX2:
        import comfy.sd

        logging.disable(logging.WARNING)  # an empty state dict makes ComfyUI list every VAE key as missing
        try:
            vae = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": 32, "ddconfig": dict(FLUX2_DDCONFIG)}})
        finally:
            logging.disable(logging.NOTSET)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in vae.first_stage_model.named_parameters():
                if p.ndim == 1:
                    p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
            vae.first_stage_model.bn.running_mean.zero_()
            vae.first_stage_model.bn.running_var.fill_(1.0)
        vae.latent_channels = 128  # what comfy.sd.VAE sets for a Flux.2 file (bn.running_mean in its state dict)
        vae.downscale_ratio = vae.upscale_ratio = 16
        _FLUX2["vae"] = vae
    return _FLUX2["vae"]


def _save_head_for(*args):
    """test_matting_nodes._save_head_for (a random decoder head for a VAE in models/diffumatting); test files are not
    importable by name under pytest's importlib mode."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("dm_test_matting_nodes", Path(__file__).with_name("test_matting_nodes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._save_head_for(*args)


@pytest.fixture(scope="module")
def vae_node(comfy, tiny_sd15, tiny_sdxl):
    """Test node DMTestVAE(kind) -> the tiny SD1.5 / SDXL VAE or the Flux.2-style one."""
    import nodes as comfy_nodes

    vaes = {"sd15": tiny_sd15.vae, "sdxl": tiny_sdxl.vae}

    class DMTestVAE:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"kind": (["sd15", "sdxl", "flux2"], {"tooltip": "tiny test VAE"})}}

        RETURN_TYPES = ("VAE",)
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self, kind):
            return (flux2_style_vae() if kind == "flux2" else vaes[kind],)

    class DMTestOddLatent:
        """A LATENT dict without its 'samples' tensor (what a broken third-party node might hand over)."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        RETURN_TYPES = ("LATENT",)
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self):
            return ({"noise_mask": torch.ones(1, 1, 8, 8)},)

    for cls in (DMTestVAE, DMTestOddLatent):
        comfy_nodes.NODE_CLASS_MAPPINGS[cls.__name__] = cls
        comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[cls.__name__] = cls.__name__
    yield "DMTestVAE"
    for name in ("DMTestVAE", "DMTestOddLatent"):
        comfy_nodes.NODE_CLASS_MAPPINGS.pop(name, None)


def _mod(comfy, sub: str):
    import importlib

    return importlib.import_module(f"{comfy.pack.__name__}.{sub}")


def _prompt(kind: str, head_name: str | None = None, tiled: bool = False, size: int = 64):
    p = {"v": {"class_type": "DMTestVAE", "inputs": {"kind": kind}},
         "img": {"class_type": "DMTestImage", "inputs": {"width": size, "height": size, "batch": 2, "kind": "greenscreen"}},
         "lat": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["v", 0]}},
         "plain": {"class_type": "VAEDecode", "inputs": {"samples": ["lat", 0], "vae": ["v", 0]}},
         "dec": {"class_type": "DiffuMattingMattingHeadDecode", "inputs": {
             "samples": ["lat", 0], "vae": ["v", 0], "key_colour": "auto", "tiled": tiled, "tile_size": 128,
             "overlap": 32}},
         "cap_plain": {"class_type": "DMTestCapture", "inputs": {"value": ["plain", 0], "key": "plain"}}}
    if head_name is not None:
        p["load"] = {"class_type": "DiffuMattingLoader", "inputs": {"head_name": head_name}}
        p["dec"]["inputs"]["head"] = ["load", 0]
    for i, name in enumerate(("image", "alpha", "fg", "mask", "key", "method")):
        p[f"cap_{name}"] = {"class_type": "DMTestCapture", "inputs": {"value": ["dec", i], "key": name}}
    return p


@pytest.mark.parametrize("kind", ["sd15", "sdxl", "flux2"])
def test_no_head_runs_the_image_only_keyer_on_the_decoded_image(run_prompt, comfy, vae_node, kind):
    """Any VAE, no head: image = VAEDecode's, alpha = the bundled keyer's learned GreenPost on that image (the core
    path, recomputed here), mask = 1 - alpha, and 'method' names the keyer file."""
    out = run_prompt(_prompt(kind))
    refine = _mod(comfy, "matting_head.refine")
    assert out["method"] == f"image-only keyer {refine.KEYER_FILE.name} on the VAE's decoded image"
    assert torch.equal(out["image"], out["plain"])
    b, h, w, _ = out["image"].shape
    assert out["alpha"].shape == (b, h, w) and out["fg"].shape == (b, h, w, 3) and len(out["key"]) == b
    assert torch.isfinite(out["alpha"]).all() and out["alpha"].min() >= 0 and out["alpha"].max() <= 1
    assert torch.allclose(out["mask"], 1 - out["alpha"])
    for i in range(b):
        ref = refine.learned_green_post(out["plain"][i : i + 1].movedim(-1, 1), refine.load_keyer())
        assert torch.allclose(out["alpha"][i], ref.alpha[0, 0], atol=1e-5)
        assert torch.allclose(out["fg"][i], ref.fg[0].movedim(0, -1), atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "flux2"])
def test_tiled_decode_in_the_image_only_path_is_vaedecodetiled(run_prompt, comfy, vae_node, kind):
    """tiled=True decodes exactly as ComfyUI's VAEDecodeTiled with the same tile size and overlap."""
    prompt = _prompt(kind, tiled=True, size=192)
    prompt["tiled"] = {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["lat", 0], "vae": ["v", 0],
                                                                 "tile_size": 128, "overlap": 32, "temporal_size": 64,
                                                                 "temporal_overlap": 8}}
    prompt["cap_tiled"] = {"class_type": "DMTestCapture", "inputs": {"value": ["tiled", 0], "key": "tiled"}}
    out = run_prompt(prompt)
    assert torch.equal(out["image"], out["tiled"])
    assert out["method"].startswith("image-only keyer")


def test_a_decoder_head_still_runs_the_papers_path_and_says_so(run_prompt, comfy, vae_node, tiny_sd15):
    name = _save_head_for(comfy, tiny_sd15.vae, "head_choice_sd15.safetensors", 3)
    out = run_prompt(_prompt("sd15", head_name=name))
    assert out["method"].startswith(f"decoder head {name} (decoder test-{name}")


def test_an_image_only_keyer_loaded_as_the_head_is_used_on_any_vae(run_prompt, comfy, vae_node):
    refine = _mod(comfy, "matting_head.refine")
    target = comfy.models_dir / "diffumatting" / "my_keyer.safetensors"
    shutil.copyfile(refine.KEYER_FILE, target)
    out = run_prompt(_prompt("flux2", head_name="my_keyer.safetensors"))
    assert out["method"] == "image-only keyer my_keyer.safetensors on the VAE's decoded image"


@pytest.mark.parametrize("damage", ["missing", "corrupt", "decoder head"])
def test_an_unusable_bundled_keyer_is_a_clear_error_naming_it(run_prompt, comfy, vae_node, tmp_path, monkeypatch,
                                                              damage, tiny_sd15):
    refine = _mod(comfy, "matting_head.refine")
    path = tmp_path / "diffumatting_keyer.safetensors"
    if damage == "corrupt":
        path.write_bytes(b"\x00" * 100)
    elif damage == "decoder head":
        name = _save_head_for(comfy, tiny_sd15.vae, "head_as_keyer.safetensors", 4)
        shutil.copyfile(comfy.models_dir / "diffumatting" / name, path)
    monkeypatch.setattr(refine, "KEYER_FILE", path)
    refine._CACHE.clear()
    err = run_prompt(_prompt("sd15"), expect_error=True)["execution_error"]
    message = err["exception_message"]
    assert "diffumatting_keyer.safetensors" in message, message  # the file, whatever is wrong with it
    assert "Traceback" not in message
    refine._CACHE.clear()


def test_a_latent_without_samples_is_a_clear_error(run_prompt, vae_node):
    """hostile X18: a LATENT dict with no 'samples' tensor -> a ValueError naming samples, not KeyError."""
    prompt = _prompt("sd15")
    prompt["lat"] = {"class_type": "DMTestOddLatent", "inputs": {}}
    for node in ("plain", "cap_plain", "img"):  # only MattingHeadDecode reads the odd latent
        del prompt[node]
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert err["exception_type"].endswith("ValueError") and err["exception_message"].startswith("samples: expected a LATENT")
