"""Nodes: GreenControl (MODEL patch) and GreenControlSampler (one-node convenience).

Green control keeps the canvas pure key colour at sampling time, training-free, with any SD1.x/SDXL checkpoint:
- a composable ``attn2_patch`` records the cond-half cross-attention of the key-colour word ("green") at the
  1/2 and 1/4 latent-resolution transformer blocks (recomputed from the block's own ``to_q``/``to_k``),
- a ``sampler_post_cfg_function`` turns the recorded maps into a background mask and pulls the CFG'd x0
  towards the key-colour latent there (model space), with a strength schedule over sigma,
- an ``OUTER_SAMPLE`` wrapper gives every sampling run fresh state (the patched MODEL is cached and reused by
  the executor; an interrupted run leaves nothing behind).
The maths lives in ``green_control/`` (pure torch); this module is the ComfyUI wiring only.
"""

from __future__ import annotations

import logging
import re
import weakref

import torch
from comfy_api.latest import io, ui

from ..common.keycolour import KeyColour, parse_key_colour
from ..green_control.anchor import anchor_x0, green_latent, strength_schedule
from ..green_control.attention import cross_attention_probs
from ..green_control.mask import aggregate_attention, background_mask
from ..green_control.tokens import find_word_positions, flatten_ids, token_matches
from .common import (category, check_key_widget, key_colour_options, key_socket_input, key_socket_output, preset_label,
                     socket_keys)

log = logging.getLogger(__name__)

CONFIG_KEY = "diffumatting_green"  # transformer_options key: the (immutable) settings of the patch
STATE_KEY = "diffumatting_green_run"  # transformer_options key: per-run recorder, set by the OUTER_SAMPLE wrapper
WRAPPER_KEY = "diffumatting_green"
DEFAULT_SUFFIX = "isolated on a pure green screen background"
DEFAULT_NEGATIVE_SUFFIX = "shadow, floor, reflection, gradient background"
RECORD_LEVELS = (2, 4)  # record blocks at 1/2 and 1/4 of the latent size (1/16 and 1/32 of the image)
KEY_CHOICES = key_colour_options(auto=False, custom=False)
DEFAULT_KEY = preset_label("chroma_green")


# ----------------------------------------------------------------------------------------------------------------
# Patch state


class MaskSink:
    """Where the last background mask of a run is left for previews. Shared (not copied) by ``clone()``."""

    def __init__(self):
        self.last_mask: torch.Tensor | None = None  # [B,1,h,w] float32 cpu, 1 = background
        self.evaluations = 0  # post-CFG calls that had recorded maps (last run)
        self.anchored = 0  # of those, calls with a non-zero anchoring weight

    def __deepcopy__(self, memo):
        return self


class GreenConfig:
    """Settings of one GreenControl patch (plain data; deep-copied with the model options, except the sink)."""

    def __init__(self, token_ids, cond_len, z_green, strength, end, tau, width, prior_scale, levels=RECORD_LEVELS,
                 sink: MaskSink | None = None):
        self.token_ids = [int(t) for t in token_ids]
        self.cond_len = int(cond_len)
        self.z_green = z_green.detach().float().cpu()  # [1,C,1,1] model space
        self.strength = float(strength)
        self.end = float(end)
        self.tau = float(tau)
        self.width = float(width)
        self.prior_scale = float(prior_scale) if prior_scale and prior_scale > 0 else None
        self.levels = tuple(int(v) for v in levels)
        self.sink = sink if sink is not None else MaskSink()


class RunState:
    """Recorder for one sampling run: the cond-half green-token maps of the current model evaluation."""

    def __init__(self, config: GreenConfig, diffusion_model):
        self.config = config
        self.diffusion_model = diffusion_model
        self.maps: list[tuple[torch.Tensor, tuple[int, int]]] = []
        self._attn_cache: dict = {}
        config.sink.evaluations = 0
        config.sink.anchored = 0

    def _attn2(self, block, block_index):
        key = (tuple(block), int(block_index))
        if key not in self._attn_cache:
            dm = self.diffusion_model
            kind, number = block[0], int(block[1])
            container = {"input": lambda: dm.input_blocks[number], "middle": lambda: dm.middle_block,
                         "output": lambda: dm.output_blocks[number]}.get(kind)
            attn = None
            if container is not None:
                for layer in container():
                    blocks = getattr(layer, "transformer_blocks", None)
                    if blocks is not None and block_index < len(blocks):
                        attn = getattr(blocks[block_index], "attn2", None)
                        break
            self._attn_cache[key] = attn
        return self._attn_cache[key]

    def record(self, n: torch.Tensor, context: torch.Tensor, eo: dict) -> None:
        cfg = self.config
        block = eo.get("block")
        cond_or_uncond = list(eo.get("cond_or_uncond") or [0])
        if block is None or 0 not in cond_or_uncond or context is None or context.ndim != 3:
            return
        length = context.shape[1]
        if length < cfg.cond_len or length % cfg.cond_len != 0:
            return  # a context that is not our prompt's (another cond in the batch)
        act = eo.get("activations_shape")
        orig = eo.get("original_shape")
        if act is None or orig is None:
            return
        h, w = int(act[-2]), int(act[-1])
        if h * w != n.shape[1] or round(orig[-2] / h) not in cfg.levels:
            return
        chunks = len(cond_or_uncond)
        if n.shape[0] % chunks != 0:
            return
        b = n.shape[0] // chunks
        attn = self._attn2(block, eo.get("block_index", 0))
        if attn is None:
            return
        rows = torch.cat([torch.arange(i * b, (i + 1) * b) for i, c in enumerate(cond_or_uncond) if c == 0])
        rows = rows.to(n.device)
        probs = cross_attention_probs(attn, n.index_select(0, rows), context.index_select(0, rows),
                                      cfg.token_ids, cond_len=cfg.cond_len)
        # heads and tokens averaged here already (aggregate_attention would do the same), cond chunks averaged
        reduced = probs.mean(dim=(1, 3)).reshape(-1, b, h * w).mean(0)
        self.maps.append((reduced.reshape(b, 1, h * w, 1).detach(), (h, w)))

    def anchor(self, x0: torch.Tensor, sigma, sample_sigmas) -> torch.Tensor:
        cfg = self.config
        maps, self.maps = self.maps, []
        if not maps:
            return x0
        if maps[0][0].shape[0] != x0.shape[0]:
            log.warning("GreenControl: recorded %d maps but x0 has batch %d; not anchoring", maps[0][0].shape[0],
                        x0.shape[0])
            return x0
        a_g = aggregate_attention([(m.to(x0.device), hw) for m, hw in maps], tuple(x0.shape[-2:]))
        z = cfg.z_green.to(device=x0.device, dtype=torch.float32)
        mask = background_mask(a_g, cfg.tau, cfg.width, x0=x0, z_green=z, prior_scale=cfg.prior_scale)
        cfg.sink.last_mask = mask.detach().float().cpu()
        cfg.sink.evaluations += 1
        sig = sigma if torch.is_tensor(sigma) else torch.tensor([float(sigma)])
        weight = strength_schedule(sig, sample_sigmas, cfg.strength, cfg.end)
        if not bool((weight > 0).any()):
            return x0
        cfg.sink.anchored += 1
        return anchor_x0(x0, z, mask, weight.to(x0.device))


# Plain module-level functions: they survive ModelPatcher.clone()'s deepcopy by identity.


def record_attn2_patch(n, context, value, extra_options):
    state = extra_options.get(STATE_KEY)
    if state is not None:
        state.record(n, context, extra_options)
    return n, context, value


def anchor_post_cfg(args):
    x0 = args["denoised"]
    to = (args.get("model_options") or {}).get("transformer_options", {})
    state = to.get(STATE_KEY)
    if state is None:
        return x0
    return state.anchor(x0, args["sigma"], to.get("sample_sigmas"))


def outer_sample_wrapper(executor, *args, **kwargs):
    """Fresh recorder per sampling run, on a shallow options copy, removed again however the run ends."""
    import comfy.model_patcher

    guider = executor.class_obj
    original = guider.model_options
    config = original.get("transformer_options", {}).get(CONFIG_KEY)
    if config is None:
        return executor(*args, **kwargs)
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        options = guider.model_options.setdefault("transformer_options", {})
        options[STATE_KEY] = RunState(config, guider.model_patcher.model.diffusion_model)
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original


def patch_model(model, config: GreenConfig):
    """MODEL -> a clone with the recorder, the post-CFG anchoring and the per-run wrapper (each installed once)."""
    import comfy.patcher_extension

    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    options[CONFIG_KEY] = config  # a second GreenControl on the same model replaces the settings
    if record_attn2_patch not in options.get("patches", {}).get("attn2_patch", []):
        m.set_model_attn2_patch(record_attn2_patch)
    if anchor_post_cfg not in m.model_options.get("sampler_post_cfg_function", []):
        m.set_model_sampler_post_cfg_function(anchor_post_cfg)
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    if outer_sample_wrapper not in m.get_wrappers(outer, WRAPPER_KEY):
        m.add_wrapper_with_key(outer, WRAPPER_KEY, outer_sample_wrapper)
    return m


# ----------------------------------------------------------------------------------------------------------------
# Prompt, tokens and the key-colour latent


def build_prompts(subject: str, negative: str, suffix: str, negative_suffix: str, key_word: str) -> tuple[str, str]:
    """The template: ``"<subject>, <suffix>"`` (the suffix's "green" becomes the key's colour word)."""
    suffix = (suffix or "").strip()
    if key_word != "green":
        suffix = re.sub(r"\bgreen\b", key_word, suffix, flags=re.IGNORECASE)
    positive = ", ".join(p for p in ((subject or "").strip(), suffix) if p)
    negative_text = ", ".join(p for p in ((negative or "").strip(), (negative_suffix or "").strip()) if p)
    return positive, negative_text


def _inner_tokenizer(tokenizer, key: str):
    for name in (f"clip_{key}", getattr(tokenizer, "clip", None), key):
        inner = getattr(tokenizer, name, None) if name else None
        if inner is not None and hasattr(inner, "inv_vocab"):
            return inner
    raise ValueError(f"clip: its tokenizer ({type(tokenizer).__name__}) has no CLIP vocabulary for {key!r}; "
                     "GreenControl supports SD1.x and SDXL text encoders")


def key_token_positions(clip, positive: str, suffix: str, word: str) -> tuple[list[int], dict]:
    """Global positions of ``word`` in the tokenized prompt (its occurrences in the suffix when it has any)."""
    tokens = clip.tokenize(positive)
    key = "l" if "l" in tokens else next(iter(tokens))
    inv = _inner_tokenizer(clip.tokenizer, key).inv_vocab
    in_suffix = 0
    if suffix and suffix.strip():
        ids = flatten_ids(clip.tokenize(suffix)[key])
        in_suffix = sum(1 for t in ids if t is not None and token_matches(inv.get(t, ""), word))
    return find_word_positions(tokens[key], inv, word, last=in_suffix or None), tokens


_GREEN_LATENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vae_key_latent(vae, rgb) -> torch.Tensor:
    """VAE + key colour (a KeyColour or [3] in [0,1]) -> latent [1,C,1,1] (VAE space), once per VAE and colour."""
    if isinstance(rgb, KeyColour):
        rgb = rgb.tensor()
    cache = _GREEN_LATENTS.setdefault(vae, {})
    key = tuple(round(float(v), 5) for v in rgb)
    if key not in cache:

        def encode(img: torch.Tensor) -> torch.Tensor:
            # Inference mode as in node execution, also when called from a script or test (the VAE's weights may
            # already be inference tensors after ComfyUI loaded them inside a run).
            with torch.inference_mode():
                return vae.encode(img.movedim(1, -1))

        cache[key] = green_latent(encode, rgb)
    return cache[key]


def _encode(clip, tokens):
    return clip.encode_from_tokens_scheduled(tokens)


def apply_green_control(model, clip, vae, subject, negative, key_colour, strength, schedule_end, suffix,
                        negative_suffix, threshold, softness, x0_prior):
    """Shared by both nodes -> (patched MODEL, positive, negative, MaskSink, positive prompt, KeyColour).

    ``key_colour``: a KeyColour (a connected key) or the widget's preset label / id / alias."""
    if not isinstance(key_colour, KeyColour):
        if not isinstance(key_colour, str) or check_key_widget(key_colour, auto=False, custom=False) is not True:
            raise ValueError(f"key_colour: expected one of {', '.join(KEY_CHOICES)}, got {key_colour!r}")
        key_colour = parse_key_colour(key_colour)
    if not key_colour.usable:
        raise ValueError(f"key: {key_colour.label} is too close to grey to paint a key-colour canvas with")
    if not 0.0 <= strength:
        raise ValueError(f"strength: expected a value >= 0, got {strength}")
    if softness <= 0:
        raise ValueError(f"softness: expected a positive ramp width, got {softness}")
    rgb = key_colour.tensor()
    word = key_colour.word
    positive_text, negative_text = build_prompts(subject, negative, suffix, negative_suffix, word)
    suffix_used = build_prompts("", "", suffix, "", word)[0]
    positions, tokens = key_token_positions(clip, positive_text, suffix_used, word)
    positive = _encode(clip, tokens)
    negative_cond = _encode(clip, clip.tokenize(negative_text))
    cond_len = int(positive[0][0].shape[1])
    if max(positions) >= cond_len:
        raise ValueError(f"clip: token position {max(positions)} is outside the encoded prompt ({cond_len} tokens)")
    latent_format = model.get_model_object("latent_format")
    z_vae = vae_key_latent(vae, rgb)
    if z_vae.shape[1] != latent_format.latent_channels:
        raise ValueError(f"vae: its latent has {z_vae.shape[1]} channels but the model expects "
                         f"{latent_format.latent_channels}; use the VAE that belongs to the checkpoint")
    z_model = latent_format.process_in(z_vae.clone())
    config = GreenConfig(positions, cond_len, z_model, strength, schedule_end, threshold, softness, x0_prior)
    return patch_model(model, config), positive, negative_cond, config.sink, positive_text, key_colour


def _node_key(key_colour, key):
    """The connected key (one colour for the whole canvas) wins over the widget."""
    if key is None:
        return key_colour
    keys = socket_keys(key, 1) if isinstance(key, KeyColour) or len(key) == 1 else list(key)
    if len({k.rgb for k in keys}) != 1:
        raise ValueError(f"key: GreenControl paints one canvas colour, got {len(set(k.rgb for k in keys))} different "
                         "key colours")
    return keys[0]


# ----------------------------------------------------------------------------------------------------------------
# Nodes


def _common_inputs():
    return [
        io.String.Input("subject", multiline=True, default="a red apple",
                        tooltip="What to paint. The prompt is '<subject>, <suffix>'."),
        io.String.Input("negative", multiline=True, default="",
                        tooltip="Negative prompt; the negative suffix is appended to it."),
        io.Combo.Input("key_colour", options=KEY_CHOICES, default=DEFAULT_KEY,
                       tooltip="Canvas colour. Its colour word (green/blue/magenta) replaces 'green' in the suffix "
                               "and is the token whose attention gives the background mask. Use a blue or magenta "
                               "key for green subjects. A connected 'key' wins."),
        io.Float.Input("strength", default=0.8, min=0.0, max=1.0, step=0.01,
                       tooltip="How hard the predicted clean latent is pulled to the key-colour latent on the "
                               "background (0 = off, 1 = replaced)."),
    ]


def _advanced_inputs():
    return [
        io.Float.Input("schedule_end", default=0.7, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Fraction of the steps that are anchored (0.7 = the first 70 %); the last steps are "
                               "left to the model for edges and fine structure."),
        io.String.Input("suffix", default=DEFAULT_SUFFIX, optional=True,
                        tooltip="Prompt template suffix; it must contain the key colour's word (e.g. 'green')."),
        io.String.Input("negative_suffix", default=DEFAULT_NEGATIVE_SUFFIX, optional=True,
                        tooltip="Appended to the negative prompt."),
        io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Normalised green-token attention below which a pixel counts as foreground."),
        io.Float.Input("softness", default=0.3, min=0.01, max=1.0, step=0.01, optional=True,
                       tooltip="Width of the ramp from foreground (threshold) to full background "
                               "(threshold + softness)."),
        io.Float.Input("x0_prior", default=0.0, min=0.0, max=10.0, step=0.05, optional=True,
                       tooltip="If > 0, the mask is also weighted by exp(-||x0 - green||^2 / s^2) with this s "
                               "(model-space latent distance): only pixels already near the key colour are pulled. "
                               "0 = off."),
        key_socket_input("Optional canvas colour (e.g. from KeyColour, for a custom hex colour); wins over "
                         "key_colour. Its colour word is used in the prompt."),
    ]


KEY_OUTPUT_TOOLTIP = ("The key colour the canvas was painted with: connect it to MattingHeadDecode / GreenPost "
                      "'key' so they key against exactly this colour.")


def _advanced_values(kwargs):
    return dict(
        schedule_end=kwargs.get("schedule_end", 0.7),
        suffix=kwargs.get("suffix", DEFAULT_SUFFIX),
        negative_suffix=kwargs.get("negative_suffix", DEFAULT_NEGATIVE_SUFFIX),
        threshold=kwargs.get("threshold", 0.3),
        softness=kwargs.get("softness", 0.3),
        x0_prior=kwargs.get("x0_prior", 0.0),
    )


class DiffuMattingGreenControl(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingGreenControl",
            display_name="GreenControl",
            category=category("sampling"),
            description="Patches a model so any sampler keeps the canvas pure key colour: records the "
                        "cross-attention of the colour word and pulls the background of each step's predicted "
                        "clean latent to the key-colour latent. Use its positive/negative outputs as the "
                        "sampler's conditioning (the token positions come from this prompt).",
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x/SDXL model (LoRAs may be applied before or after)."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint (with its LoRAs)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: encodes the key colour once."),
                *_common_inputs(),
                *_advanced_inputs(),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The patched model, for any sampler node."),
                io.Conditioning.Output(display_name="positive", tooltip="'<subject>, <suffix>' encoded."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative prompt + negative suffix encoded."),
                key_socket_output(KEY_OUTPUT_TOOLTIP),
            ],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour, auto=False, custom=False)

    @classmethod
    def execute(cls, model, clip, vae, subject, negative, key_colour, strength, **kwargs) -> io.NodeOutput:
        patched, positive, negative_cond, _, _, used = apply_green_control(
            model, clip, vae, subject, negative, _node_key(key_colour, kwargs.get("key")), strength,
            **_advanced_values(kwargs))
        return io.NodeOutput(patched, positive, negative_cond, (used,))


class DiffuMattingGreenControlSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="DiffuMattingGreenControlSampler",
            display_name="GreenControlSampler",
            category=category("sampling"),
            description="GreenControl + KSampler in one node: paints the subject on a pure key-colour canvas and "
                        "returns the latent and the last background mask.",
            inputs=[
                io.Model.Input("model", tooltip="Any SD1.x/SDXL model."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: encodes the key colour once."),
                *_common_inputs(),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule."),
                io.Int.Input("width", default=512, min=64, max=8192, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=64, max=8192, step=8, tooltip="Image height in pixels."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per run."),
                *_advanced_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The sampled latent (decode it with the VAE or "
                                                                 "MattingHeadDecode)."),
                io.Mask.Output(display_name="background_mask",
                               tooltip="The last step's background mask per image, at image size "
                                       "(ComfyUI mask polarity: 1 = background / transparent, 0 = subject)."),
                key_socket_output(KEY_OUTPUT_TOOLTIP),
            ],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour, auto=False, custom=False)

    @classmethod
    def execute(cls, model, clip, vae, subject, negative, key_colour, strength, seed, steps, cfg, sampler_name,
                scheduler, width, height, batch_size, **kwargs) -> io.NodeOutput:
        import comfy.model_management as mm
        import nodes as comfy_nodes  # ComfyUI's top-level nodes module (the pack's own is imported relatively)

        patched, positive, negative_cond, sink, _, used = apply_green_control(
            model, clip, vae, subject, negative, _node_key(key_colour, kwargs.get("key")), strength,
            **_advanced_values(kwargs))
        channels = model.get_model_object("latent_format").latent_channels
        latent = torch.zeros([batch_size, channels, height // 8, width // 8], device=mm.intermediate_device())
        out = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive,
                                          negative_cond, {"samples": latent}, denoise=1.0)[0]
        if sink.last_mask is None:
            raise RuntimeError("GreenControlSampler: no green-token attention was recorded during sampling "
                               "(the model has no cross-attention blocks at 1/2 or 1/4 of the latent size)")
        mask = torch.nn.functional.interpolate(sink.last_mask, size=(height // 8 * 8, width // 8 * 8),
                                               mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
        mask = mask.to(mm.intermediate_device())
        return io.NodeOutput(out, mask, (used,), ui=ui.PreviewMask(mask, cls=cls))


NODES = [DiffuMattingGreenControl, DiffuMattingGreenControlSampler]
