"""Nodes: DiffuMattingLoader (matting head + optional green-canvas LoRA) and MattingHeadDecode."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from .common import (MattingHead, category, check_interrupted, check_key_widget, intermediate_device,
                     key_colour_options, key_socket_input, key_socket_output, preset_label, progress_bar, socket_keys,
                     widget_key)

FOLDER = "diffumatting"
NONE = "none"
DEFAULT_KEY_PRESET = "chroma_green"  # GreenControl's default canvas: one canvas, one key colour
MAX_LATENT = 1e4  # |latent| beyond this is no VAE latent (they stay within tens); decoding it gives inf/NaN


class LoadedHead:
    """What flows through a DIFFUMATTING_HEAD socket: the head module, its metadata and a ModelPatcher."""

    def __init__(self, head, info: dict, name: str):
        self.head, self.info, self.name = head, info, name
        self._patcher = None

    @property
    def patcher(self):
        if self._patcher is None:
            import comfy.model_management as mm
            import comfy.model_patcher

            self._patcher = comfy.model_patcher.ModelPatcher(
                self.head, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        return self._patcher

    def __repr__(self):
        return f"LoadedHead({self.name}, {self.info.get('decoder_family')})"


def _list(folder: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_filename_list(folder)
    except KeyError:
        return []


def load_head_file(name: str) -> LoadedHead:
    """File name in models/diffumatting -> LoadedHead. ValueError naming the file for missing/corrupt/foreign ones."""
    import comfy.utils
    import folder_paths

    from ..matting_head.weights import head_from_state

    path = folder_paths.get_full_path(FOLDER, name)
    if path is None or not os.path.isfile(path):
        raise ValueError(f"head_name: {name!r} was not found in models/{FOLDER} (put the head's .safetensors there)")
    if not path.lower().endswith((".safetensors", ".sft")):
        raise ValueError(f"head_name: {name!r} is not a .safetensors file (matting heads are safetensors)")
    try:
        state, meta = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"head_name: {name!r} is corrupt or not a safetensors file ({first})") from exc
    head, info = head_from_state(state, meta, f"head_name {name!r}")
    return LoadedHead(head, info, name)


def apply_lora(model, name: str, strength: float):
    """MODEL + LoRA file in models/diffumatting -> patched clone. ValueError when the file does not fit the MODEL."""
    import comfy.lora
    import comfy.lora_convert
    import comfy.utils
    import folder_paths

    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"lora_name: {name!r} was not found in models/{FOLDER}")
    try:
        lora = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"lora_name: {name!r} is corrupt or unreadable ({first})") from exc
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map)
    new = model.clone()
    applied = new.add_patches(patches, strength) if patches else []
    if not applied:
        raise ValueError(f"lora_name: {name!r} has no weights for this MODEL's UNet (is it a LoRA for another "
                         "model family, or a matting head?)")
    return new


class DiffuMattingLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = _list(FOLDER)
        return io.Schema(
            node_id="DiffuMattingLoader",
            display_name="DiffuMattingLoader",
            category=category("loaders"),
            description="Loads a matting head (and optionally the green-canvas UNet LoRA) from models/diffumatting.",
            inputs=[
                io.Combo.Input("head_name", options=files,
                               tooltip="Matting head weights (.safetensors) in models/diffumatting; the head must "
                               "have been trained for the VAE you decode with."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional MODEL to apply the green-canvas LoRA to (passed through otherwise)."),
                io.Combo.Input("lora_name", options=[NONE] + files, default=NONE, optional=True,
                               tooltip="Green-canvas UNet LoRA from the trainer (models/diffumatting), or none."),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05, optional=True,
                               tooltip="Strength of the LoRA on the MODEL."),
            ],
            outputs=[
                MattingHead.Output(display_name="head", tooltip="The loaded matting head (for MattingHeadDecode)."),
                io.Model.Output(display_name="model",
                                tooltip="The MODEL with the LoRA applied (unchanged without LoRA; empty if no "
                                "MODEL was connected)."),
            ],
        )

    @classmethod
    def execute(cls, head_name, model=None, lora_name=NONE, lora_strength=1.0):
        head = load_head_file(head_name)
        if lora_name and lora_name != NONE:
            if model is None:
                raise ValueError("model: a LoRA was chosen (lora_name) but no MODEL is connected")
            if lora_strength != 0:
                model = apply_lora(model, lora_name, lora_strength)
        return io.NodeOutput(head, model)


def _check_latent_values(z: torch.Tensor) -> None:
    """ValueError naming ``samples`` for NaN / infinite / absurdly large latent values (not a deep decoder error)."""
    lo, hi = (float(v) for v in torch.aminmax(z.detach().float()))
    if not (lo == lo and hi == hi) or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ValueError("samples: the latent contains NaN or infinite values (did the sampler diverge?)")
    if max(abs(lo), abs(hi)) > MAX_LATENT:
        raise ValueError(f"samples: latent values reach {max(abs(lo), abs(hi)):.3g}; a VAE latent stays within "
                         f"+-{MAX_LATENT:g} (did the sampler diverge?)")


class DiffuMattingMattingHeadDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffuMattingMattingHeadDecode",
            display_name="MattingHeadDecode",
            category=category("matting"),
            description="VAE-decodes a latent and predicts matting-level alpha. With a decoder matting head "
                        "(DiffuMattingLoader) the alpha comes from the decoder's features in the same pass; with no "
                        "head connected (any VAE: SD1.5, SDXL, Flux, ...), or an image-only keyer file loaded as the "
                        "head, the image-only keyer refines GreenPost's alpha on the decoded image. The 'method' "
                        "output says which ran.",
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to decode (e.g. from a KSampler)."),
                io.Vae.Input("vae", tooltip="The VAE whose decoder the head was trained on."),
                MattingHead.Input("head", optional=True,
                                  tooltip="Optional matting head from DiffuMattingLoader, trained for this VAE's "
                                  "decoder. Leave it unconnected to use the bundled image-only keyer "
                                  "(weights/diffumatting_keyer.safetensors) on the decoded image, which works with "
                                  "every VAE."),
                io.Combo.Input("key_colour", options=key_colour_options(custom=False),
                               default=preset_label(DEFAULT_KEY_PRESET),
                               tooltip="Canvas colour the latent was generated on (the default is GreenControl's "
                               "default canvas), or auto (estimated from the decoded image's border). Heads are "
                               "trained with the nominal canvas colour: connect GreenControlSampler's 'key' to 'key' "
                               "to use exactly the colour it painted (a connected key wins)."),
                io.Boolean.Input("tiled", default=False,
                                 tooltip="Decode in tiles (for large images or little memory); tiles are blended "
                                 "over the overlap."),
                io.Int.Input("tile_size", default=512, min=128, max=4096, step=64,
                             tooltip="Tile size in pixels (tiled mode)."),
                io.Int.Input("overlap", default=128, min=32, max=1024, step=32,
                             tooltip="Overlap between tiles in pixels (tiled mode)."),
                key_socket_input("Optional key colour of the canvas (GreenControl / GreenControlSampler 'key', or "
                                 "KeyColour); wins over key_colour."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The decoded image (as VAEDecode gives it)."),
                io.Mask.Output(display_name="alpha", tooltip="Alpha from the matting head: 1 = opaque foreground."),
                io.Image.Output(display_name="fg", tooltip="Straight (not premultiplied) foreground colour."),
                io.Mask.Output(display_name="mask",
                               tooltip="ComfyUI mask polarity: 1 = transparent background (= 1 - alpha), as "
                               "LoadImage and JoinImageWithAlpha use."),
                key_socket_output("The key colour of each image the head keyed with (given, connected or "
                                  "estimated), for GreenPost and SaveMattingDataset."),
                io.String.Output(display_name="method",
                                 tooltip="What produced the alpha: the decoder head (its file and decoder) or the "
                                 "image-only keyer on the decoded image (its file)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour, custom=False)

    @classmethod
    def execute(cls, samples, vae, head=None, key_colour=DEFAULT_KEY_PRESET, tiled=False, tile_size=512, overlap=128,
                key=None):
        import comfy.model_management as mm

        from ..matting_head.decode import count_tiles, decode_with_head
        from ..matting_head.taps import tap_spec
        from ..matting_head.weights import check_compatible

        if head is not None and not isinstance(head, LoadedHead):
            raise ValueError("head: expected a matting head from DiffuMattingLoader (or nothing: the image-only keyer)")
        if isinstance(samples, dict) and "samples" not in samples:
            raise ValueError(f"samples: expected a LATENT (a dict holding 'samples'), got one with keys "
                             f"{sorted(map(str, samples))}")
        z = samples["samples"] if isinstance(samples, dict) else samples
        if not isinstance(z, torch.Tensor) or z.ndim != 4:
            raise ValueError(f"samples: expected an image latent [B,C,h,w], got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        if z.shape[0] == 0 or z.shape[-1] == 0 or z.shape[-2] == 0:
            raise ValueError(f"samples: the latent is empty (shape {tuple(z.shape)}); connect a latent with at least "
                             "one image")
        _check_latent_values(z)
        if tiled and overlap >= tile_size:
            raise ValueError(f"overlap: must be smaller than tile_size ({tile_size} px), got {overlap} px")
        if head is None or head.head.image_only:
            return _decode_then_key(z, vae, head, key_colour, key, tiled, tile_size, overlap)
        spec = tap_spec(vae.first_stage_model)
        check_compatible(head.info, spec.info())
        keys = socket_keys(key, z.shape[0]) if key is not None else widget_key(key_colour)
        keys = None if isinstance(keys, str) else keys if isinstance(keys, list) else [keys] * z.shape[0]  # None: auto
        scale = int(getattr(vae, "upscale_ratio", 8)) if isinstance(getattr(vae, "upscale_ratio", 8), int) else 8
        tile = max(1, tile_size // scale) if tiled else 0
        ov = overlap // scale
        if tiled and ov >= tile:
            raise ValueError(f"overlap: must be smaller than tile_size ({tile_size} px), got {overlap} px")

        h, w = z.shape[-2:]
        side = (min(tile, h) * scale, min(tile, w) * scale) if tiled else (h * scale, w * scale)
        per_image = vae.memory_used_decode((1, z.shape[1], side[0] // scale, side[1] // scale), vae.vae_dtype)
        mm.load_models_gpu([vae.patcher, head.patcher], memory_required=per_image * 1.3)
        device = vae.device
        free = mm.get_free_memory(device)
        chunk = max(1, min(z.shape[0], int(free // max(1, per_image * 1.3)))) if not tiled else 1
        model_head = head.head
        dtype = next(model_head.parameters()).dtype

        def decode_fn(lat):
            out = vae.first_stage_model.decode(lat.to(vae.vae_dtype).to(device))
            if not bool(torch.isfinite(out).all()):
                raise ValueError("samples: decoding this latent gives NaN or infinite pixels (its values are out of "
                                 f"range for this VAE in {str(vae.vae_dtype).replace('torch.', '')})")
            return vae.process_output(out.float()).to(dtype)

        n_tiles = count_tiles(h, w, tile, ov) * z.shape[0]
        pbar = progress_bar(n_tiles)
        outs = {"image": [], "alpha": [], "fg": []}
        used = []
        for i in range(0, z.shape[0], chunk):
            check_interrupted()
            k = None if keys is None else keys[i:i + chunk]
            res = decode_with_head(decode_fn, spec, model_head, z[i:i + chunk].to(device), key=k, tile=tile,
                                   overlap=ov, scale=scale, check_interrupt=check_interrupted,
                                   on_tile=lambda: pbar.update(1))
            for name in outs:
                outs[name].append(res[name].float().to(intermediate_device()))
            used.extend(res["keys"])
        image = torch.cat(outs["image"]).movedim(1, -1).contiguous()
        fg = torch.cat(outs["fg"]).movedim(1, -1).contiguous()
        alpha = torch.cat(outs["alpha"])[:, 0].contiguous()
        method = f"decoder head {head.name} (decoder {head.info.get('decoder_name') or head.info.get('decoder_family')})"
        return io.NodeOutput(image, alpha, fg, 1.0 - alpha, tuple(used), method)


def _decode_then_key(z, vae, head, key_colour, key, tiled: bool, tile_size: int, overlap: int) -> io.NodeOutput:
    """The image-only path of MattingHeadDecode: the VAE's own decode (any VAE ComfyUI loads), then the learned keyer
    (the connected image-only head, or the bundled one) refining GreenPost's alpha on the decoded image, in chunks
    of frames on the compute device."""
    from ..matting_head.refine import KEYER_FILE, learned_green_post, load_keyer
    from .common import compute_device

    keyer = head.head if head is not None else load_keyer()  # ValueError naming the file when it is unusable
    name = head.name if head is not None else KEYER_FILE.name
    if tiled:
        scale = vae.spacial_compression_decode()
        image = vae.decode_tiled(z, tile_x=max(1, tile_size // scale), tile_y=max(1, tile_size // scale),
                                 overlap=overlap // scale)
    else:
        image = vae.decode(z)
    image = image.reshape(-1, *image.shape[-3:])[..., :3].float()  # video VAEs: frames as a batch
    if not bool(torch.isfinite(image).all()):
        raise ValueError("samples: decoding this latent gives NaN or infinite pixels (its values are out of range for "
                         "this VAE)")
    keys = socket_keys(key, image.shape[0]) if key is not None else widget_key(key_colour)
    device = compute_device()
    from ..greenpost.core import frames_that_fit

    # chunks of frames as one batch on the compute device (GreenPost's batched path), sized from its free memory
    chunk = frames_that_fit(image.shape[1], image.shape[2], device, most=16)
    pbar = progress_bar(image.shape[0])
    fgs, alphas, used = [], [], []
    for i in range(0, image.shape[0], chunk):
        check_interrupted()
        ki = keys[i : i + chunk] if isinstance(keys, list) else keys
        x = image[i : i + chunk].movedim(-1, 1).clamp(0, 1).to(device)
        res = learned_green_post(x, keyer, key_colour=ki, on_tile=lambda done, total: check_interrupted())
        fgs.append(res.fg.float().to(intermediate_device()))
        alphas.append(res.alpha.float().to(intermediate_device()))
        used.extend(res.keys)
        pbar.update(x.shape[0])
    fg = torch.cat(fgs).movedim(1, -1).contiguous()
    alpha = torch.cat(alphas)[:, 0].contiguous()
    method = f"image-only keyer {name} on the VAE's decoded image"
    return io.NodeOutput(image.to(intermediate_device()).contiguous(), alpha, fg, 1.0 - alpha, tuple(used), method)


NODES = [DiffuMattingLoader, DiffuMattingMattingHeadDecode]
