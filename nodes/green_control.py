"""Nodes: GreenControl (MODEL patch) and GreenControlSampler (one-node convenience).

Green control keeps the canvas pure key colour at sampling time, training-free, with any SD1.x/SDXL checkpoint:
- a composable ``attn2_patch`` records the cond-half cross-attention of the key colour's word ("green") at the
  1/2 and 1/4 latent-resolution transformer blocks (recomputed from the block's own ``to_q``/``to_k``),
- a ``sampler_post_cfg_function`` turns the recorded maps into a background mask and pulls the CFG'd x0
  towards the key-colour latent there (model space), with a strength schedule over sigma,
- an ``OUTER_SAMPLE`` wrapper creates a fresh ``RunState`` for every sampling run in that run's own options copy
  (nothing is stored on the patched MODEL, which the executor caches and several samplers may share; an
  interrupted run leaves nothing behind). GreenControlSampler reads the mask of its own run from a ``RunLog``.
The recorder, prompt building, token positions, mask and anchoring live in ``green_control/`` (pure torch);
this module is the ComfyUI wiring only.
"""

from __future__ import annotations

import logging
import weakref
from typing import NamedTuple

import torch
from comfy_api.latest import io, ui

from ..common.keycolour import AUTO, KeyColour, parse_key_colour
from ..green_control.anchor import key_latent
from ..green_control.prompt import (DEFAULT_NEGATIVE_SUFFIX, DEFAULT_SUFFIX, build_negative, build_prompt,
                                    choose_subject_key, key_suffix)
from ..green_control.recorder import RECORD_LEVELS, GreenSettings, RunLog, RunState, unet_attn2_lookup
from ..green_control.tokens import clip_inverse_vocab, suffix_word_positions
from .common import (category, check_key_widget, key_colour_options, key_socket_input, key_socket_output, preset_label,
                     socket_keys)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SUFFIX", "DEFAULT_NEGATIVE_SUFFIX", "RECORD_LEVELS", "GreenSettings", "RunState", "RunLog",
           "apply_green_control", "patch_model", "attach_run_log", "key_token_positions", "vae_key_latent", "NODES"]

CONFIG_KEY = "diffumatting_green"  # transformer_options key: the patch's GreenSettings (immutable)
STATE_KEY = "diffumatting_green_run"  # transformer_options key of a run's options copy: that run's RunState
RUNS_KEY = "diffumatting_green_runs"  # transformer_options key: a RunLog that finished runs are appended to
WRAPPER_KEY = "diffumatting_green"
KEY_CHOICES = key_colour_options(auto=True, custom=False)  # "auto": from the subject text (choose_subject_key)
DEFAULT_KEY = preset_label("chroma_green")


# ----------------------------------------------------------------------------------------------------------------
# Hooks. Plain module-level functions: they survive ModelPatcher.clone()'s deepcopy by identity. No state lives on
# the patched model: the OUTER_SAMPLE wrapper creates a RunState per sampling run, in that run's options copy.


def record_attn2_patch(n, context, value, extra_options):
    state = extra_options.get(STATE_KEY)
    if state is not None:
        state.record(n, context, block=extra_options.get("block"), block_index=extra_options.get("block_index", 0),
                     cond_or_uncond=extra_options.get("cond_or_uncond"),
                     activations_shape=extra_options.get("activations_shape"),
                     original_shape=extra_options.get("original_shape"))
    return n, context, value


def anchor_post_cfg(args):
    x0 = args["denoised"]
    to = (args.get("model_options") or {}).get("transformer_options", {})
    state = to.get(STATE_KEY)
    if state is None:
        return x0
    return state.anchor(x0, args["sigma"], to.get("sample_sigmas"))


def outer_sample_wrapper(executor, *args, **kwargs):
    """A fresh RunState per sampling run, on a copy of the guider's options (so two runs of one patched model, a
    cached model reused by the next prompt or a run after an interrupted one never share state); the original
    options are restored however the run ends. A finished run's state goes to the model's RunLog, if it has one."""
    import comfy.model_patcher

    guider = executor.class_obj
    original = guider.model_options
    options = original.get("transformer_options", {})
    settings = options.get(CONFIG_KEY)
    if settings is None:
        return executor(*args, **kwargs)
    state = RunState(settings, unet_attn2_lookup(guider.model_patcher.model.diffusion_model))
    try:
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        guider.model_options.setdefault("transformer_options", {})[STATE_KEY] = state
        out = executor(*args, **kwargs)
        state.finished = True
    finally:
        guider.model_options = original
    runs = options.get(RUNS_KEY)
    if runs is not None:
        runs.append(state)
    return out


def patch_model(model, settings: GreenSettings):
    """MODEL -> a clone with the recorder, the post-CFG anchoring and the per-run wrapper (each installed once)."""
    import comfy.patcher_extension

    m = model.clone()
    options = m.model_options.setdefault("transformer_options", {})
    options[CONFIG_KEY] = settings  # a second GreenControl on the same model replaces the settings
    options.pop(RUNS_KEY, None)  # a reader's log upstream is not this model's
    if record_attn2_patch not in options.get("patches", {}).get("attn2_patch", []):
        m.set_model_attn2_patch(record_attn2_patch)
    if anchor_post_cfg not in m.model_options.get("sampler_post_cfg_function", []):
        m.set_model_sampler_post_cfg_function(anchor_post_cfg)
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    if outer_sample_wrapper not in m.get_wrappers(outer, WRAPPER_KEY):
        m.add_wrapper_with_key(outer, WRAPPER_KEY, outer_sample_wrapper)
    return m


def attach_run_log(model) -> RunLog:
    """A (private) patched MODEL -> a new RunLog in its options: every sampling run of it appends its finished
    RunState there. Attach to a clone you sample with yourself; a MODEL shared with other nodes would share it."""
    runs = RunLog()
    model.model_options.setdefault("transformer_options", {})[RUNS_KEY] = runs
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Tokens and the key-colour latent (the logic is in green_control/; this is the CLIP/VAE plumbing)


def key_token_positions(clip, positive: str, suffix: str, word: str) -> tuple[list[int], dict]:
    """Global positions of ``word`` in the tokenized prompt that belong to the suffix, and the prompt's tokens.
    ``ValueError`` naming ``suffix`` when the suffix does not contain the word (a subject's word is never used)."""
    tokens = clip.tokenize(positive)
    key = "l" if "l" in tokens else next(iter(tokens))
    inv = clip_inverse_vocab(clip.tokenizer, key)
    suffix_chunks = clip.tokenize(suffix)[key] if suffix and suffix.strip() else []
    return suffix_word_positions(tokens[key], suffix_chunks, inv, word), tokens


_KEY_LATENTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def vae_key_latent(vae, key) -> torch.Tensor:
    """VAE + key colour (a KeyColour or [3] in [0,1]) -> latent [1,C,1,1] (VAE space), once per VAE and colour."""
    rgb = key.tensor() if isinstance(key, KeyColour) else torch.as_tensor(key, dtype=torch.float32).flatten()
    cache = _KEY_LATENTS.setdefault(vae, {})
    cache_key = tuple(round(float(v), 5) for v in rgb)
    if cache_key not in cache:

        def encode(img: torch.Tensor) -> torch.Tensor:
            # Inference mode as in node execution, also when called from a script or test (the VAE's weights may
            # already be inference tensors after ComfyUI loaded them inside a run).
            with torch.inference_mode():
                return vae.encode(img.movedim(1, -1))

        cache[cache_key] = key_latent(encode, rgb)
    return cache[cache_key]


def _encode(clip, tokens):
    return clip.encode_from_tokens_scheduled(tokens)


class GreenControlResult(NamedTuple):
    model: object  # the patched MODEL (a clone)
    positive: list  # CONDITIONING of ``prompt``
    negative: list  # CONDITIONING of ``negative_prompt``
    prompt: str
    negative_prompt: str
    key: KeyColour
    settings: GreenSettings
    key_note: str = ""  # which key colour was used and why (shown in the node's preview)


def apply_green_control(model, clip, vae, subject, negative, key_colour, strength, schedule_end, suffix,
                        negative_suffix, threshold, softness, x0_prior) -> GreenControlResult:
    """Shared by both nodes: prompts built, encoded, the key latent computed and a clone of MODEL patched.

    ``key_colour``: a KeyColour (a connected key), the widget's preset label / id / alias, or "auto" (a key colour
    the subject does not name: ``green_control.prompt.choose_subject_key``)."""
    note = ""
    if isinstance(key_colour, str) and key_colour.strip().lower() == AUTO:
        preset, why = choose_subject_key(subject)
        key_colour = parse_key_colour(preset)
        note = f"auto key colour: {key_colour.label} ({why})"
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
    word = key_colour.word
    positive_text = build_prompt(subject, suffix, word)
    negative_text = build_negative(negative, negative_suffix)
    positions, tokens = key_token_positions(clip, positive_text, key_suffix(suffix, word), word)
    positive = _encode(clip, tokens)
    negative_cond = _encode(clip, clip.tokenize(negative_text))
    cond_len = int(positive[0][0].shape[1])
    if max(positions) >= cond_len:
        raise ValueError(f"clip: token position {max(positions)} is outside the encoded prompt ({cond_len} tokens)")
    latent_format = model.get_model_object("latent_format")
    z_vae = vae_key_latent(vae, key_colour)
    if z_vae.shape[1] != latent_format.latent_channels:
        raise ValueError(f"vae: its latent has {z_vae.shape[1]} channels but the model expects "
                         f"{latent_format.latent_channels}; use the VAE that belongs to the checkpoint")
    z_model = latent_format.process_in(z_vae.clone())
    settings = GreenSettings(tuple(positions), cond_len, z_model, strength, schedule_end, threshold, softness,
                             x0_prior)
    return GreenControlResult(patch_model(model, settings), positive, negative_cond, positive_text, negative_text,
                              key_colour, settings, note or f"key colour: {key_colour.label}")


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
                               "key for green subjects; 'auto' does that from the subject text (magenta, or blue, "
                               "when it names a green-ish thing or colour; the preview and the 'key' output say "
                               "which). A connected 'key' wins."),
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
                        tooltip="Prompt template suffix: the prompt is '<subject>, <suffix>'. It must contain the "
                                "colour word ('green', replaced by the key's word, e.g. 'blue'): only the "
                                "suffix's colour word gives the mask, never one in the subject. Without it (or "
                                "empty) the node raises an error."),
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
        return check_key_widget(key_colour, auto=True, custom=False)

    @classmethod
    def execute(cls, model, clip, vae, subject, negative, key_colour, strength, **kwargs) -> io.NodeOutput:
        res = apply_green_control(model, clip, vae, subject, negative, _node_key(key_colour, kwargs.get("key")),
                                  strength, **_advanced_values(kwargs))
        return io.NodeOutput(res.model, res.positive, res.negative, (res.key,), ui=ui.PreviewText(res.key_note))


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
        return check_key_widget(key_colour, auto=True, custom=False)

    @classmethod
    def execute(cls, model, clip, vae, subject, negative, key_colour, strength, seed, steps, cfg, sampler_name,
                scheduler, width, height, batch_size, **kwargs) -> io.NodeOutput:
        import comfy.model_management as mm
        import nodes as comfy_nodes  # ComfyUI's top-level nodes module (the pack's own is imported relatively)

        res = apply_green_control(model, clip, vae, subject, negative, _node_key(key_colour, kwargs.get("key")),
                                  strength, **_advanced_values(kwargs))
        runs = attach_run_log(res.model)  # res.model is this node's own clone: the log sees only ITS runs
        channels = model.get_model_object("latent_format").latent_channels
        latent = torch.zeros([batch_size, channels, height // 8, width // 8], device=mm.intermediate_device())
        out = comfy_nodes.common_ksampler(res.model, seed, steps, cfg, sampler_name, scheduler, res.positive,
                                          res.negative, {"samples": latent}, denoise=1.0)[0]
        state = runs.last
        if state is None or state.last_mask is None:
            raise RuntimeError("GreenControlSampler: no colour-word attention was recorded during sampling "
                               "(the model has no cross-attention blocks at 1/2 or 1/4 of the latent size)")
        mask = torch.nn.functional.interpolate(state.last_mask, size=(height // 8 * 8, width // 8 * 8),
                                               mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)
        mask = mask.to(mm.intermediate_device())
        preview = {**_ui_dict(ui.PreviewMask(mask, cls=cls)), **_ui_dict(ui.PreviewText(res.key_note))}
        return io.NodeOutput(out, mask, (res.key,), ui=preview)


def _ui_dict(output) -> dict:
    """A V3 UI output -> its dict (two previews, the mask and the key colour's text, go out as one dict)."""
    return output.as_dict()


NODES = [DiffuMattingGreenControl, DiffuMattingGreenControlSampler]
