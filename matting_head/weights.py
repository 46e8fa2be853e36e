"""Matting head weights: safetensors with metadata (format, version, decoder family, taps, config, training)."""

from __future__ import annotations

import json
import os

import torch

from ..common.files import atomic_path
from .network import MattingHead

FORMAT = "diffumatting.matting_head"
VERSION = 1


class HeadMismatchError(ValueError):
    """The head's weights were made for another decoder than the one it is given."""


def _meta_str(d: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()}


def save_head(path: str | os.PathLike, head: MattingHead, decoder_info: dict, training: dict | None = None,
              extra: dict | None = None, dtype: torch.dtype | None = None) -> None:
    """Write the head atomically as safetensors with metadata (weights in ``dtype``, default: as they are;
    loading casts them to the head's float32)."""
    from safetensors.torch import save_file

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
    meta.update(extra or {})
    sd = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, os.fspath(tmp), metadata=_meta_str(meta))


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
    out["latent_channels"] = int(meta.get("latent_channels", "0"))
    out["version"] = version
    if not out.get("taps") or not out.get("tap_channels"):
        raise ValueError(f"{source}: metadata lacks the decoder taps")
    return out


def head_from_state(state: dict[str, torch.Tensor], meta: dict[str, str] | None, source: str = "head"):
    """(state dict, raw metadata) -> (MattingHead in eval mode, parsed metadata). ValueError if inconsistent."""
    info = parse_metadata(meta, source)
    head = MattingHead(info["tap_channels"], info["config"])
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the head described in its metadata "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"{source}: tensor {k!r} holds NaN or infinite values")
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
