"""Matting head weights: safetensors with metadata (format, version, decoder family, taps, config, training).

Reading validates before allocating: the metadata's types and ranges (:func:`parse_metadata`), then the weights'
names and shapes against the architecture the metadata describes (built on the ``meta`` device, no memory), then
finiteness. Writing refuses non-finite weights (also those that overflow the save dtype, e.g. fp16)."""

from __future__ import annotations

import json
import os

import torch

from ..common.files import atomic_write_bytes
from .keyer import PRIORS
from .network import DEFAULT_CONFIG, INPUTS, MattingHead

# What an image-only head (the learned keyer) records in place of a decoder.
IMAGE_ONLY_DECODER = {"family": "none", "name": "image-only", "latent_channels": 0, "taps": [], "tap_channels": [],
                      "fingerprint": ""}

FORMAT = "diffumatting.matting_head"
VERSION = 1

# Bounds of the metadata's numbers (far above any real head, far below sizes that could exhaust memory).
MAX_WIDTH = 1024  # lateral and trunk widths
MAX_BLOCKS = 16  # residual blocks per stage
MAX_TAP_CHANNELS = 4096  # decoder feature channels
MAX_LATENT_CHANNELS = 256
_INT_LISTS = {"lateral": MAX_WIDTH}
_INTS = {**{k: (1, MAX_WIDTH) for k in ("width_8", "width_16", "width_32", "width_4", "width_2", "width_1")},
         **{k: (0, MAX_BLOCKS) for k in ("blocks_8", "blocks_16", "blocks_32")}}


class HeadMismatchError(ValueError):
    """The head's weights were made for another decoder than the one it is given."""


def _meta_str(d: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()}


def save_head(path: str | os.PathLike, head: MattingHead, decoder_info: dict, training: dict | None = None,
              extra: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Write the head atomically as safetensors with metadata (weights in ``dtype``, default: as they are;
    loading casts them to the head's float32). ValueError (nothing written) when a weight is NaN or infinite in
    that dtype; OSError (nothing written) when the disk is full or read-only."""
    from safetensors.torch import save

    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "decoder_family": decoder_info["family"],
        "decoder_name": decoder_info.get("name", ""),
        "latent_channels": str(decoder_info["latent_channels"]),
        "taps": decoder_info["taps"],
        "tap_channels": decoder_info["tap_channels"],
        "decoder_fingerprint": decoder_info.get("fingerprint", ""),
        "config": head.config,
        "training": training or {},
    }
    if decoder_info.get("head_image", "decoded") != "decoded":
        meta["head_image"] = decoder_info["head_image"]  # the side-decoder experiment's heads read the original image
    meta.update(extra or {})
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in head.state_dict().items()}
    check_finite(sd, f"head {os.path.basename(os.fspath(path))}")
    atomic_write_bytes(path, save(sd, metadata=_meta_str(meta)))  # temp file + fsync + rename


def check_finite(state: dict[str, torch.Tensor], source: str = "head") -> None:
    """state dict -> None; ValueError naming the first tensor that holds NaN or infinite values."""
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f"{source}: tensor {k!r} holds NaN or infinite values (in {str(v.dtype).replace('torch.', '')}"
                             "; a learning rate too high, or weights too large for this dtype)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(config, source: str = "head") -> dict:
    """A head config (metadata ``config``) -> the full config (defaults filled in). ValueError naming ``source``
    and the field for an unknown key, a wrong type or a value outside its range."""
    if not isinstance(config, dict):
        raise ValueError(f"{source}: metadata field 'config' must be a JSON object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"{source}: metadata config has unknown field(s) {unknown} (a head file from a newer pack?)")
    cfg = {**DEFAULT_CONFIG, **config}
    for k, hi in _INT_LISTS.items():
        v = cfg[k]
        if not isinstance(v, list) or len(v) != 4 or not all(_is_int(x) and 1 <= x <= hi for x in v):
            raise ValueError(f"{source}: metadata config field {k!r} must be 4 integers in 1..{hi}, got {v!r}")
    for k, (lo, hi) in _INTS.items():
        v = cfg[k]
        if not _is_int(v) or not lo <= v <= hi:
            raise ValueError(f"{source}: metadata config field {k!r} must be an integer in {lo}..{hi}, got {v!r}")
    if not isinstance(cfg["predict_fg"], bool):
        raise ValueError(f"{source}: metadata config field 'predict_fg' must be true or false, got {cfg['predict_fg']!r}")
    if cfg["prior"] not in PRIORS:
        raise ValueError(f"{source}: metadata config field 'prior' must be one of {', '.join(PRIORS)}, got "
                         f"{cfg['prior']!r} (a head file from a newer pack?)")
    if cfg["inputs"] not in INPUTS:
        raise ValueError(f"{source}: metadata config field 'inputs' must be one of {', '.join(INPUTS)}, got "
                         f"{cfg['inputs']!r} (a head file from a newer pack?)")
    return cfg


def parse_metadata(meta: dict[str, str] | None, source: str = "head") -> dict:
    """Raw safetensors metadata -> dict with decoded JSON fields. Raises ValueError if it is not a matting head."""
    if not meta or meta.get("format") != FORMAT:
        raise ValueError(f"{source}: not a DiffuMatting matting head (safetensors metadata 'format' is "
                         f"{(meta or {}).get('format')!r}, expected {FORMAT!r})")
    try:
        version = int(meta.get("version", "0"))
    except ValueError:
        version = 0
    if version < 1 or version > VERSION:
        raise ValueError(f"{source}: matting head format version {meta.get('version')!r} is not supported "
                         f"(this pack reads versions 1 to {VERSION})")
    out = dict(meta)
    for k in ("taps", "tap_channels", "config", "training"):
        try:
            out[k] = json.loads(meta[k]) if k in meta else ({} if k in ("config", "training") else None)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: metadata field {k!r} is not valid JSON ({exc})") from exc
    out["config"] = check_config(out["config"], source)
    out["version"] = version
    if out["config"]["inputs"] == "image":  # the learned keyer: no decoder
        if out.get("taps") or out.get("tap_channels"):
            raise ValueError(f"{source}: an image-only head's metadata must not list decoder taps, got "
                             f"{out.get('taps')!r}")
        out["taps"], out["tap_channels"], out["latent_channels"] = [], [], 0
        return out
    if not out.get("taps") or not out.get("tap_channels"):
        raise ValueError(f"{source}: metadata lacks the decoder taps")
    try:
        out["latent_channels"] = int(meta.get("latent_channels", "0"))
    except ValueError:
        raise ValueError(f"{source}: metadata field 'latent_channels' must be an integer, got "
                         f"{meta.get('latent_channels')!r}") from None
    if not 1 <= out["latent_channels"] <= MAX_LATENT_CHANNELS:
        raise ValueError(f"{source}: metadata field 'latent_channels' must be in 1..{MAX_LATENT_CHANNELS}, got "
                         f"{out['latent_channels']}")
    taps, chans = out["taps"], out["tap_channels"]
    if not isinstance(taps, list) or len(taps) != 4:
        raise ValueError(f"{source}: metadata field 'taps' must list 4 decoder layers, got {taps!r}")
    if not isinstance(chans, list) or len(chans) != 4 or not all(_is_int(c) and 1 <= c <= MAX_TAP_CHANNELS
                                                                   for c in chans):
        raise ValueError(f"{source}: metadata field 'tap_channels' must be 4 integers in 1..{MAX_TAP_CHANNELS}, "
                         f"got {chans!r}")
    return out


def head_from_state(state: dict[str, torch.Tensor], meta: dict[str, str] | None, source: str = "head"):
    """(state dict, raw metadata) -> (MattingHead in eval mode, parsed metadata). ValueError if inconsistent."""
    info = parse_metadata(meta, source)
    with torch.device("meta"):  # the architecture's shapes without allocating it
        shapes = {k: tuple(v.shape) for k, v in MattingHead(info["tap_channels"], info["config"]).state_dict().items()}
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the head described in its metadata "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    wrong = [(k, tuple(state[k].shape), s) for k, s in shapes.items() if tuple(state[k].shape) != s]
    if wrong:
        k, got, want = wrong[0]
        raise ValueError(f"{source}: weights do not match the head described in its metadata (tensor {k!r} is "
                         f"{list(got)}, the metadata's tap_channels/config give {list(want)}; {len(wrong)} such)")
    check_finite(state, source)
    head = MattingHead(info["tap_channels"], info["config"])
    head.load_state_dict(state)
    head.eval().requires_grad_(False)
    return head, info


def load_head(path: str | os.PathLike):
    """safetensors file -> (MattingHead, metadata dict). Raises ValueError for a missing, corrupt or foreign file."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"head: {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"head: {os.path.basename(path)} is not a readable safetensors file ({exc})") from exc
    return head_from_state(state, meta, os.path.basename(path))


def check_compatible(info: dict, decoder_info: dict, strict_weights: bool = True) -> None:
    """Raise HeadMismatchError unless a head (parsed metadata) fits a decoder (``TapSpec.info()``)."""
    if info["config"].get("inputs") == "image":
        raise HeadMismatchError(f"head: {info.get('decoder_name') or 'this file'} is the image-only keyer (it reads the "
                                "decoded image, not a decoder's features); use it on the decoded image, or load a "
                                "head trained for this VAE")
    src = info.get("decoder_name") or info.get("decoder_family")
    if info["decoder_family"] != decoder_info["family"]:
        raise HeadMismatchError(f"head: trained on a {info['decoder_family']} decoder ({src}), but the VAE's decoder "
                                f"is {decoder_info['family']}; load a head trained for this VAE")
    if int(info["latent_channels"]) != int(decoder_info["latent_channels"]):
        raise HeadMismatchError(f"head: made for {info['latent_channels']}-channel latents ({src}), but the VAE "
                                f"decodes {decoder_info['latent_channels']}-channel latents")
    if list(info["tap_channels"]) != list(decoder_info["tap_channels"]):
        raise HeadMismatchError(f"head: expects decoder taps with {info['tap_channels']} channels, the VAE's "
                                f"decoder has {decoder_info['tap_channels']}")
    fp = info.get("decoder_fingerprint") or ""
    if strict_weights and fp and decoder_info.get("fingerprint") and fp != decoder_info["fingerprint"]:
        raise HeadMismatchError(f"head: trained on different decoder weights ({src}, fingerprint {fp}) than this "
                                f"VAE's (fingerprint {decoder_info['fingerprint']}); its alpha would be wrong")
