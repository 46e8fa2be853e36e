"""Decoder feature taps: forward hooks on leaf modules of a VAE decoder, coarse to fine (strides 8, 4, 2, 1).

Supported decoders:
- ``taesd``: TAESD-family ``nn.Sequential`` decoders (ours in ``taesd.py`` and ComfyUI's ``comfy.taesd``): the last
  residual block before each 2x upsampler and the last block at full resolution.
- ``autoencoderkl``: ComfyUI's SD1.x/SDXL ``Decoder`` (``decoder.up`` is run from ``up[3]`` down to ``up[0]``):
  ``up[3].block[-1]`` (1/8), ``up[2].block[-1]`` (1/4), ``up[1].block[-1]`` (1/2), ``up[0].block[-1]`` (full).
Hooks go on leaf modules that the decoder's forward calls directly (hooks on containers such as ``up[i]`` never fire).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TapSpec:
    family: str  # "taesd" or "autoencoderkl"
    latent_channels: int
    names: list[str]  # module paths inside the decoder, coarse to fine
    channels: list[int]  # channels of each tap
    modules: list[nn.Module] = field(repr=False, default_factory=list)
    fingerprint: str = ""  # hash of the decoder's output conv: tells decoders of one family apart

    def info(self) -> dict:
        """The JSON-able part (stored in head weight metadata)."""
        return {"family": self.family, "latent_channels": self.latent_channels, "taps": list(self.names),
                "tap_channels": list(self.channels), "fingerprint": self.fingerprint}


def _fingerprint(conv: nn.Module) -> str:
    w = conv.weight.detach().float().cpu()
    q = (w * 1000).round().to(torch.int32).numpy().tobytes()
    return hashlib.sha256(q).hexdigest()[:16]


def _is_taesd_block(m: nn.Module) -> bool:
    return isinstance(getattr(m, "conv", None), nn.Sequential) and hasattr(m, "skip") and hasattr(m, "fuse")


def find_decoder(model: nn.Module) -> nn.Module:
    """A VAE-ish module (AutoencoderKL, ComfyUI TAESD wrapper, TinyAutoencoder or a bare decoder) -> its decoder."""
    for attr in ("decoder", "taesd_decoder"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Module):
            return sub
    return model


def tap_spec(decoder: nn.Module) -> TapSpec:
    """decoder module -> TapSpec (family, tap names, channels, modules). Raises ValueError for other decoders."""
    decoder = find_decoder(decoder)
    if isinstance(decoder, nn.Sequential) and any(_is_taesd_block(m) for m in decoder):
        layers = list(decoder)
        names = []
        for i, m in enumerate(layers):
            if isinstance(m, nn.Upsample):
                names.append(str(max(k for k in range(i) if _is_taesd_block(layers[k]))))
        names.append(str(max(k for k, m in enumerate(layers) if _is_taesd_block(m))))
        if len(names) != 4:
            raise ValueError(f"decoder: TAESD-style decoder with {len(names) - 1} upsamplers (expected 3)")
        mods = [layers[int(n)] for n in names]
        chans = [m.conv[-1].out_channels for m in mods]
        first_conv = next(m for m in layers if isinstance(m, nn.Conv2d))
        return TapSpec("taesd", first_conv.in_channels, names, chans, mods, _fingerprint(layers[-1]))
    up = getattr(decoder, "up", None)
    if isinstance(up, nn.ModuleList) and hasattr(decoder, "conv_out") and hasattr(decoder, "conv_in"):
        if len(up) != 4:
            raise ValueError(f"decoder: AutoencoderKL decoder with {len(up)} resolution levels (expected 4)")
        names = [f"up.{i}.block.{len(up[i].block) - 1}" for i in (3, 2, 1, 0)]
        mods = [up[i].block[-1] for i in (3, 2, 1, 0)]
        chans = [int(getattr(m, "out_channels", None) or m.conv2.out_channels) for m in mods]
        return TapSpec("autoencoderkl", decoder.conv_in.in_channels, names, chans, mods,
                       _fingerprint(decoder.conv_out))
    raise ValueError(f"decoder: {type(decoder).__name__} is not a supported decoder (expected a TAESD-family "
                     "decoder or ComfyUI's SD1.x/SDXL AutoencoderKL decoder)")


class TapRecorder:
    """Context manager: records each tap's output (optionally transformed, e.g. projected) on every decoder call.

    ``transforms[i](tensor) -> tensor`` runs inside the hook, so only the transformed feature is kept."""

    def __init__(self, modules: list[nn.Module], transforms: list | None = None):
        self.modules = list(modules)
        self.transforms = transforms
        self.outputs: list[list[torch.Tensor]] = [[] for _ in self.modules]
        self._handles = []

    def _hook(self, index):
        def hook(_module, _inputs, output):
            t = self.transforms[index] if self.transforms else None
            self.outputs[index].append(t(output) if t is not None else output)
        return hook

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def take(self) -> list[torch.Tensor]:
        """The taps of the decoder calls since the last take, concatenated over calls (batch dim) -> list of 4."""
        if any(len(o) == 0 for o in self.outputs):
            raise RuntimeError("TapRecorder: a tap did not fire (is the decoder the one the taps were made for?)")
        out = [o[0] if len(o) == 1 else torch.cat(o, 0) for o in self.outputs]
        self.outputs = [[] for _ in self.modules]
        return out
