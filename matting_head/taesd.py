"""TAESD-family tiny autoencoders (TAESD, TAESDXL, TAEF1, TAEF2) built from their published state dicts.

The architecture is read off the weights: each half is an ``nn.Sequential`` of 3x3 convs and residual blocks
(three 3x3 convs + ReLU, a 1x1 skip when the width changes, and in TAEF2 a GroupNorm "pool" branch in the three
lowest-resolution blocks). Parameter-free layers (the decoder's input clamp, ReLU and 2x upsamplers) hold no keys
and are re-created at their fixed positions. Keys are used unchanged, so ``load_state_dict`` is strict.
Images are in [0, 1] at the interface (encoder input, decoder output); the decoder clamps its latent input with
``tanh(x / 3) * 3`` and there is no latent scaling.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from torch import nn

GN_GROUPS = 4  # the TAEF2 mid-block GroupNorm has 4 groups over 4 x width channels


class LatentClamp(nn.Module):
    """Soft clamp of the decoder input: ``tanh(x / 3) * 3``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class TinyBlock(nn.Module):
    """Residual block: x [B,Cin,h,w] -> [B,Cout,h,w]; optional GroupNorm pool branch added to the input first."""

    def __init__(self, c_in: int, c_out: int, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pool:
            wide = 4 * c_in
            self.pool = nn.Sequential(
                nn.Conv2d(c_in, wide, 1, bias=False), nn.GroupNorm(GN_GROUPS, wide), nn.ReLU(),
                nn.Conv2d(wide, c_in, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _group_by_index(state_dict: dict[str, torch.Tensor], what: str) -> dict[int, dict[str, torch.Tensor]]:
    groups: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in state_dict.items():
        head, _, tail = key.partition(".")
        if not head.isdigit() or not tail:
            raise ValueError(f"{what}: unexpected key {key!r} (expected TAESD-family keys like '3.conv.0.weight')")
        groups[int(head)][tail] = value
    if not groups:
        raise ValueError(f"{what}: the state dict is empty")
    return groups


def _layer_from_keys(keys: dict[str, torch.Tensor], index: int, what: str) -> nn.Module:
    if "conv.0.weight" in keys:
        w = keys["conv.0.weight"]
        return TinyBlock(w.shape[1], w.shape[0], pool="pool.0.weight" in keys)
    if "weight" in keys and keys["weight"].ndim == 4:
        w = keys["weight"]
        stride = 1
        return nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], stride=stride, padding=w.shape[-1] // 2,
                         bias="bias" in keys)
    raise ValueError(f"{what}: layer {index} has keys {sorted(keys)} (not a TAESD conv or block)")


def build_decoder(state_dict: dict[str, torch.Tensor]) -> nn.Sequential:
    """TAESD-family decoder from its state dict: latent [B,C,h,w] (raw) -> RGB [B,3,8h,8w] roughly in [0,1]."""
    groups = _group_by_index(state_dict, "decoder weights")
    layers: list[nn.Module] = []
    for i in range(max(groups) + 1):
        if i in groups:
            layers.append(_layer_from_keys(groups[i], i, "decoder weights"))
        elif i == 0:
            layers.append(LatentClamp())
        elif i == 2:
            layers.append(nn.ReLU())
        else:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    dec = nn.Sequential(*layers)
    n_up = sum(isinstance(m, nn.Upsample) for m in dec)
    if n_up != 3 or not isinstance(dec[-1], nn.Conv2d) or dec[-1].out_channels != 3:
        raise ValueError("decoder weights: not a TAESD-family decoder (expected 3 upsamplers and a final 3-channel conv)")
    dec.load_state_dict(state_dict, strict=True)
    return dec


def build_encoder(state_dict: dict[str, torch.Tensor]) -> nn.Sequential:
    """TAESD-family encoder from its state dict: RGB [B,3,H,W] in [0,1] -> latent [B,C,H/8,W/8] (raw)."""
    groups = _group_by_index(state_dict, "encoder weights")
    if set(groups) != set(range(max(groups) + 1)):
        raise ValueError("encoder weights: layer indices have gaps (not a TAESD-family encoder)")
    layers: list[nn.Module] = []
    for i in range(max(groups) + 1):
        layer = _layer_from_keys(groups[i], i, "encoder weights")
        # The bias-free 3x3 convs between block groups are the stride-2 downsamplers.
        if isinstance(layer, nn.Conv2d) and 0 < i < max(groups) and layer.bias is None:
            layer.stride = (2, 2)
        layers.append(layer)
    enc = nn.Sequential(*layers)
    if sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in enc) != 3 or enc[0].in_channels != 3:
        raise ValueError("encoder weights: not a TAESD-family encoder (expected an RGB input and 3 downsamplers)")
    enc.load_state_dict(state_dict, strict=True)
    return enc


def decoder_tap_names(decoder: nn.Sequential) -> list[str]:
    """Names of the TAESD decoder's feature taps, coarse to fine: the last block before each upsampler and the
    last block at full resolution (strides 8, 4, 2, 1)."""
    names = []
    layers = list(decoder)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Upsample):
            j = max(k for k in range(i) if isinstance(layers[k], TinyBlock))
            names.append(str(j))
    names.append(str(max(k for k, m in enumerate(layers) if isinstance(m, TinyBlock))))
    return names


def _load_safetensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(path), meta
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc


class TinyAutoencoder(nn.Module):
    """A TAESD-family encoder/decoder pair (either may be None). Images in [0,1], latents raw."""

    def __init__(self, encoder: nn.Sequential | None, decoder: nn.Sequential | None, name: str = "taesd"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.name = name

    @property
    def latent_channels(self) -> int:
        if self.decoder is not None:
            return self.decoder[1].in_channels
        return self.encoder[-1].out_channels

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B,3,H,W] float in [0,1] (H, W multiples of 8) -> latent [B,C,H/8,W/8]."""
        if self.encoder is None:
            raise ValueError(f"{self.name}: no encoder weights were loaded")
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"image: expected [B,3,H,W] with H and W multiples of 8, got {tuple(image.shape)}")
        return self.encoder(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B,C,h,w] -> image [B,3,8h,8w] float clamped to [0,1]."""
        if self.decoder is None:
            raise ValueError(f"{self.name}: no decoder weights were loaded")
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent: expected [B,{self.latent_channels},h,w], got {tuple(latent.shape)}")
        return self.decoder(latent).clamp(0, 1)


def load_tiny_autoencoder(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> TinyAutoencoder:
    """Folder holding ``*_encoder.safetensors`` / ``*_decoder.safetensors`` (or one decoder file) -> TinyAutoencoder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.listdir(path))
        dec = [f for f in files if f.endswith("_decoder.safetensors")]
        enc = [f for f in files if f.endswith("_encoder.safetensors")]
        if not dec and not enc:
            raise ValueError(f"{path}: no *_decoder.safetensors or *_encoder.safetensors file in this folder")
        dec_path = os.path.join(path, dec[0]) if dec else None
        enc_path = os.path.join(path, enc[0]) if enc else None
        name = (dec or enc)[0].rsplit("_", 1)[0]
    else:
        dec_path, enc_path = path, None
        name = os.path.basename(path).split("_")[0].split(".")[0]
    decoder = encoder = None
    if dec_path:
        sd, _ = _load_safetensors(dec_path)
        decoder = build_decoder({k: v.to(dtype) for k, v in sd.items()})
    if enc_path:
        sd, _ = _load_safetensors(enc_path)
        encoder = build_encoder({k: v.to(dtype) for k, v in sd.items()})
    ae = TinyAutoencoder(encoder, decoder, name=name).eval()
    ae.requires_grad_(False)
    return ae


def random_tiny_autoencoder(latent_channels: int = 4, width: int = 8, seed: int = 0, pool: bool = False,
                            ) -> TinyAutoencoder:
    """A TAESD-layout autoencoder with random weights and narrow layers (tests, examples): built through the same
    state-dict path as the real weights."""
    g = torch.Generator().manual_seed(seed)

    def blk():
        return TinyBlock(width, width, pool=pool)

    dec = nn.Sequential(
        LatentClamp(), nn.Conv2d(latent_channels, width, 3, padding=1), nn.ReLU(),
        blk(), blk(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False),
        blk(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False),
        blk(), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1, bias=False),
        blk(), nn.Conv2d(width, 3, 3, padding=1),
    )
    enc = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), blk(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), blk(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), blk(),
        nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), blk(),
        nn.Conv2d(width, latent_channels, 3, padding=1),
    )
    states = []
    for m in (enc, dec):
        sd = {}
        for k, v in m.state_dict().items():
            sd[k] = torch.randn(v.shape, generator=g) * (0.5 / max(1, v[0].numel()) ** 0.5) if v.ndim > 1 else \
                (torch.ones_like(v) if "pool.1.weight" in k else torch.zeros_like(v))
        states.append(sd)
    ae = TinyAutoencoder(build_encoder(states[0]), build_decoder(states[1]), name="random-taesd").eval()
    ae.requires_grad_(False)
    return ae
