"""Integration harness: a real ComfyUI 0.8 in this process (CPU), with the pack loaded by ComfyUI's own loader.

Everything here is skipped, with a message saying how to enable it, unless ``COMFYUI_PATH`` points at a ComfyUI
checkout whose requirements are installed in the Python running the tests.

Fixtures (see CONTRIBUTING.md): ``comfy``, ``run_prompt``, ``tiny_sd15``, ``tiny_sdxl``, ``random_sd15_checkpoint``.
Test-only nodes registered into ComfyUI: ``DMTestTinyModels``, ``DMTestCapture``, ``DMTestImage``.
"""

from __future__ import annotations

import logging
import os
import types
from pathlib import Path

import pytest

COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
CACHE_DIR = Path(os.environ.get("DIFFUMATTING_TEST_CACHE", Path.home() / ".cache" / "diffumatting-tests"))
SKIP_REASON = (
    "integration tests need a ComfyUI 0.8 checkout: set COMFYUI_PATH=/path/to/ComfyUI and install its "
    "requirements.txt into this Python (see README, 'Tests')"
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.comfyui)


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def _bootstrap(tmp_root: Path) -> types.SimpleNamespace:
    """ComfyUI from COMFYUI_PATH (CPU) through the pack's one bootstrap, temp folders, the pack, the test nodes."""
    from diffumatting.comfy_bootstrap import ComfyUIError, start_comfyui

    models_dir = tmp_root / "models"
    try:
        ns = start_comfyui(COMFYUI_PATH, cpu=True, output_dir=tmp_root / "output", temp_dir=tmp_root / "temp",
                           input_dir=tmp_root / "input", user_dir=tmp_root / "user",
                           model_folders={name: models_dir / name for name in
                                          ("checkpoints", "loras", "controlnet", "vae", "diffumatting")})
    except ComfyUIError as exc:
        pytest.fail(str(exc))
    if not hasattr(ns, "models_dir"):
        _register_test_nodes(ns.nodes)
        ns.models_dir, ns.tmp_root = models_dir, tmp_root
    return ns


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    if not COMFYUI_PATH:
        pytest.skip(SKIP_REASON)
    yield _bootstrap(tmp_path_factory.mktemp("comfyui"))
    # Drop the test models while ComfyUI is still intact (ModelPatcher.__del__ at interpreter exit is noisy).
    import gc

    _TINY.clear()
    gc.collect()


# ----------------------------------------------------------------------------------------------------------------
# Running API-format prompts in-process


CAPTURED: dict[str, object] = {}


@pytest.fixture(scope="session")
def executor(comfy):
    """The pack's PromptRunner and its stand-in server (which keeps the messages nodes sent to the UI)."""
    from diffumatting.comfy_bootstrap import PromptRunner

    runner = PromptRunner(comfy)
    return runner.executor, runner.server, runner


@pytest.fixture
def run_prompt(comfy, executor):
    """``run_prompt(prompt, extra_pnginfo=None) -> {capture key: value}``; fails the test with ComfyUI's message."""
    from diffumatting.comfy_bootstrap import PromptError

    ex, server, runner = executor

    def run(prompt: dict, extra_pnginfo: dict | None = None, expect_error: bool = False):
        CAPTURED.clear()
        try:
            history = runner.run(prompt, extra_data={"extra_pnginfo": extra_pnginfo or {}})
        except PromptError as exc:
            if expect_error:
                key = "validation_error" if exc.kind == "validation" else "execution_error"
                if exc.kind == "validation":
                    return {key: exc.detail["error"], "node_errors": exc.detail["node_errors"]}
                return {key: exc.detail}
            detail = exc.detail
            if isinstance(detail, dict) and exc.kind == "execution":
                detail = f"{detail.get('node_type')}: {detail.get('exception_message')}\n" + "".join(detail.get("traceback", []))
            pytest.fail(f"prompt failed in {exc.kind}: {exc}\n{detail}")
        if expect_error:
            pytest.fail("the prompt was expected to fail but ran")
        result = dict(CAPTURED)
        result["_history"] = history
        return result

    return run


# ----------------------------------------------------------------------------------------------------------------
# Tiny models built with ComfyUI's own classes


TINY_UNET = {
    "sd15": dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        adm_in_channels=None, in_channels=4, model_channels=32, num_res_blocks=[1, 1, 1],
        transformer_depth=[1, 1, 1], channel_mult=[1, 2, 2], transformer_depth_middle=1,
        use_linear_in_transformer=False, context_dim=768, transformer_depth_output=[1, 1, 1, 1, 1, 1],
        use_temporal_resblock=False, use_temporal_attention=False,
    ),
    "sdxl": dict(
        use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
        adm_in_channels=2816, num_classes="sequential", in_channels=4, model_channels=32, num_res_blocks=[1, 1, 1],
        transformer_depth=[0, 1, 1], channel_mult=[1, 2, 2], transformer_depth_middle=1,
        use_linear_in_transformer=True, context_dim=2048, transformer_depth_output=[0, 0, 1, 1, 1, 1],
        use_temporal_resblock=False, use_temporal_attention=False,
    ),
}
TINY_TEXT_ENCODER = {"num_hidden_layers": 3, "intermediate_size": 256}
TINY_VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
                         ch_mult=[1, 2, 4, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
FULL_SD15_UNET = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], channel_mult=[1, 2, 4, 4], transformer_depth_middle=1,
    use_linear_in_transformer=False, context_dim=768, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_temporal_resblock=False, use_temporal_attention=False,
)
FULL_VAE_DDCONFIG = dict(TINY_VAE_DDCONFIG, ch=128, num_res_blocks=2)


def init_random_weights(module, seed: int) -> None:
    """Deterministic, well-scaled random weights (ComfyUI's layers skip initialisation, leaving garbage)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            kind = type(sub).__name__
            weight = getattr(sub, "weight", None)
            bias = getattr(sub, "bias", None)
            if not isinstance(weight, torch.nn.Parameter) and not isinstance(weight, torch.Tensor):
                continue
            if "Norm" in kind:
                weight.fill_(1.0)
            elif kind == "Embedding":
                weight.copy_(torch.randn(weight.shape, generator=gen) * 0.02)
            else:
                fan_in = weight[0].numel() if weight.ndim > 1 else weight.numel()
                weight.copy_(torch.randn(weight.shape, generator=gen) * (fan_in ** -0.5))
            if isinstance(bias, torch.Tensor):
                bias.zero_()
        for name, param in module.named_parameters():
            if not torch.isfinite(param).all():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def build_models(family: str, unet_config: dict, vae_ddconfig: dict, text_config: dict | None, seed: int = 0):
    """MODEL (ModelPatcher), CLIP and VAE of an SD1.5- or SDXL-family model with random weights."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models
    import torch

    config_cls = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family]
    model_config = config_cls(dict(unet_config))
    if family == "sdxl" and unet_config["model_channels"] < 64:
        model_config.unet_config["num_head_channels"] = 16
    model_config.set_inference_dtype(torch.float32, None)
    base = model_config.get_model({})
    init_random_weights(base.diffusion_model, seed)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())

    te_options = {}
    if text_config:
        te_options = {"clip_l_model_config": dict(text_config), "clip_g_model_config": dict(text_config)}
    clip = comfy.sd.CLIP(target=model_config.clip_target(), model_options=te_options)
    init_random_weights(clip.cond_stage_model, seed + 1)

    logging.disable(logging.WARNING)  # an empty state dict makes ComfyUI list every VAE key as missing
    try:
        vae = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": 4, "ddconfig": dict(vae_ddconfig)}})
    finally:
        logging.disable(logging.NOTSET)
    init_random_weights(vae.first_stage_model, seed + 2)
    return model, clip, vae, model_config


def build_controlnet(model_config, seed: int = 3):
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    import torch

    cfg = dict(model_config.unet_config)
    cfg.pop("out_channels", None)
    cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
    control_model = comfy.cldm.cldm.ControlNet(**cfg)
    init_random_weights(control_model, seed)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device(), manual_cast_dtype=None)


_TINY: dict[str, types.SimpleNamespace] = {}


def tiny_models(family: str) -> types.SimpleNamespace:
    if family not in _TINY:
        model, clip, vae, model_config = build_models(family, TINY_UNET[family], TINY_VAE_DDCONFIG, TINY_TEXT_ENCODER,
                                                      seed=11 if family == "sd15" else 23)
        _TINY[family] = types.SimpleNamespace(model=model, clip=clip, vae=vae, model_config=model_config,
                                              controlnet=build_controlnet(model_config))
    return _TINY[family]


@pytest.fixture(scope="session")
def tiny_sd15(comfy):
    return tiny_models("sd15")


@pytest.fixture(scope="session")
def tiny_sdxl(comfy):
    return tiny_models("sdxl")


@pytest.fixture(scope="session")
def random_sd15_checkpoint(comfy):
    """File name (in the checkpoints folder) of a full-size SD1.5 checkpoint with random weights, built once."""
    models_dir = comfy.models_dir
    import comfy.sd  # noqa: F811  (the module, from here on)

    name = "random_sd15.safetensors"
    cached = CACHE_DIR / name
    if not cached.is_file():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        logging.info("building the full-size random SD1.5 checkpoint once into %s", cached)
        model, clip, vae, _ = build_models("sd15", FULL_SD15_UNET, FULL_VAE_DDCONFIG, None, seed=5)
        import torch

        model.model.diffusion_model.to(torch.float16)
        clip.cond_stage_model.to(torch.float16)
        vae.first_stage_model.to(torch.float16)
        partial = cached.with_suffix(".partial.safetensors")
        comfy.sd.save_checkpoint(str(partial), model, clip, vae, metadata={"diffumatting": "random test checkpoint"})
        os.replace(partial, cached)
        del model, clip, vae
    link = models_dir / "checkpoints" / name
    if not link.exists():
        link.symlink_to(cached)
    return name


# ----------------------------------------------------------------------------------------------------------------
# Test-only nodes


def _register_test_nodes(nodes_module) -> None:
    import torch

    class DMTestTinyModels:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"family": (["sd15", "sdxl"], {"tooltip": "tiny test model family"})}}

        RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CONTROL_NET")
        FUNCTION = "load"
        CATEGORY = "testing"

        def load(self, family):
            m = tiny_models(family)
            return (m.model, m.clip, m.vae, m.controlnet)

    class DMTestCapture:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": ("*", {}), "key": ("STRING", {"default": "value"})}}

        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "testing"

        @classmethod
        def VALIDATE_INPUTS(cls, input_types=None, **kwargs):
            return True

        def capture(self, value, key):
            CAPTURED[key] = value
            return {}

        @classmethod
        def IS_CHANGED(cls, **kwargs):
            return float("nan")

    class DMTestImage:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"width": ("INT", {"default": 64, "min": 8, "max": 4096}),
                                 "height": ("INT", {"default": 64, "min": 8, "max": 4096}),
                                 "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
                                 "kind": (["greenscreen", "background"], {})}}

        RETURN_TYPES = ("IMAGE", "MASK")
        RETURN_NAMES = ("image", "alpha")
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, width, height, batch, kind):
            image, alpha = make_test_image(width, height, batch, kind)
            return (image, alpha)

    class DMTestBadRGBA:
        """fg IMAGE, alpha MASK and background IMAGE the core nodes cannot make: one NaN in one of them, or an empty
        batch (issue 19 N1-N6)."""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"kind": (["fine", "nan_fg", "nan_alpha", "nan_background", "empty"], {})}}

        RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
        FUNCTION = "make"
        CATEGORY = "testing"

        def make(self, kind):
            n = 0 if kind == "empty" else 2
            g = torch.Generator().manual_seed(0)
            fg, alpha = torch.rand(n, 48, 64, 3, generator=g), torch.rand(n, 48, 64, generator=g)
            bg = torch.rand(max(n, 1), 48, 64, 3, generator=g)
            if kind == "nan_fg":
                fg[1, 5, 6, 0] = float("nan")
            elif kind == "nan_alpha":
                alpha[0, 7, 8] = float("nan")
            elif kind == "nan_background":
                bg[0, 9, 10, 2] = float("nan")
            return fg, alpha, bg

    for cls in (DMTestTinyModels, DMTestCapture, DMTestImage, DMTestBadRGBA):
        nodes_module.NODE_CLASS_MAPPINGS[cls.__name__] = cls
        nodes_module.NODE_DISPLAY_NAME_MAPPINGS[cls.__name__] = cls.__name__


def make_test_image(width: int, height: int, batch: int = 1, kind: str = "greenscreen"):
    """IMAGE [B,H,W,3] and alpha [B,H,W] (1 = opaque): a soft-edged striped disc on green, or a gradient backdrop."""
    import torch

    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    images, alphas = [], []
    for b in range(batch):
        cx, cy, r = 0.5 + 0.05 * b, 0.5, 0.3
        dist = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
        alpha = ((r - dist) / 0.04 + 0.5).clamp(0, 1)
        if kind == "background":
            img = torch.stack([xs, ys, 1 - xs * 0.5], -1)
            alpha = torch.ones_like(alpha)
        else:
            stripes = (torch.sin(xs * 40) * 0.5 + 0.5)
            fg = torch.stack([0.8 * stripes + 0.1, 0.3 * torch.ones_like(xs), 0.6 * (1 - stripes) + 0.2], -1)
            green = torch.tensor([0.0, 0.69, 0.25])
            img = alpha[..., None] * fg + (1 - alpha[..., None]) * green
        images.append(img)
        alphas.append(alpha)
    return torch.stack(images), torch.stack(alphas)


# ----------------------------------------------------------------------------------------------------------------
# A tiny upscale model (issue #20): the 4x round-trip template's UpscaleModelLoader reads models/upscale_models


TINY_UPSCALE_MODEL = "4x_upscale_model.safetensors"


@pytest.fixture(scope="session")
def tiny_upscale_model(comfy):
    """File name of a tiny 4x SRVGGNetCompact (spandrel's class, the one ComfyUI's UpscaleModelLoader loads; 8
    features, 2 convolutions, small random weights: about the input upsampled plus noise) in a temporary
    ``upscale_models`` folder registered first with ComfyUI."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    folder = comfy.models_dir / "upscale_models"
    folder.mkdir(parents=True, exist_ok=True)
    comfy.folder_paths.add_model_folder_path("upscale_models", str(folder), is_default=True)
    path = folder / TINY_UPSCALE_MODEL
    if not path.exists():
        torch.manual_seed(0)
        net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.05)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return TINY_UPSCALE_MODEL
