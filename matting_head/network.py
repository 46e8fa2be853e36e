"""The matting head: one network family that predicts matting-level alpha from a key-colour image, in two modes.

- ``inputs="taps"`` (the paper's head): features of a frozen VAE decoder at strides 8, 4, 2, 1 + the decoded RGB.
- ``inputs="image"`` (the learned keyer): the same trunk, its four feature maps made by a small learned encoder of
  the image itself (RGB, RGB minus the key colour, the prior alpha): no decoder needed, so it keys any image.

Inputs are the decoder's feature taps at strides 8, 4, 2 and 1 (coarse to fine), the decoded RGB and a
colour-difference key alpha of the decoded image. Each tap first goes through a 1x1 "lateral" projection (the
decode path applies it inside the forward hook, so the wide full-resolution features are never kept). Most
parameters work at 1/8 and 1/16 resolution (context: holes, the whole silhouette); the finer stages are narrow,
so the head costs a small fraction of the decoder. The output is a correction of the key alpha in logit space,
sigmoid -> alpha, plus an optional straight-colour residual on the decoded RGB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .keyer import PRIORS, prior_alpha

DEFAULT_CONFIG = {
    "lateral": [64, 32, 24, 16],  # 1x1 projection width per tap (strides 8, 4, 2, 1)
    "width_8": 64,  # trunk width at 1/8
    "width_16": 160,  # context width at 1/16
    "width_32": 160,  # context width at 1/32
    "blocks_8": 1,
    "blocks_16": 2,
    "blocks_32": 2,
    "width_4": 32,
    "width_2": 24,
    "width_1": 16,
    "predict_fg": True,
    "prior": "colour_difference",  # the key alpha the head corrects: "colour_difference" or "greenpost" (keyer.py)
    "inputs": "taps",  # "taps" (decoder features) or "image" (the image-only keyer: a learned encoder instead)
}
INPUTS = ("taps", "image")
# The image-only keyer's default size (about 7.5 k multiply-adds per pixel; its alpha goes to GreenPost's unmixing,
# so it predicts no colour). Small enough for about 1 s per megapixel on two CPU cores.
IMAGE_CONFIG = {
    "inputs": "image", "prior": "greenpost", "predict_fg": False,
    "lateral": [32, 16, 12, 8], "width_8": 48, "width_16": 64, "width_32": 96,
    "blocks_8": 1, "blocks_16": 2, "blocks_32": 1, "width_4": 16, "width_2": 12, "width_1": 8,
}
IMAGE_INPUT_CHANNELS = 7  # rgb, rgb - key, prior alpha
STRIDES = (8, 4, 2, 1)
LOGIT_CLAMP = 6.0
INFER_STRIP = 128  # rows per strip of the full-resolution stage at inference (bounds its activations' memory)


class ResBlock(nn.Module):
    """x [B,C,h,w] -> [B,C,h,w]: two 3x3 convs with a residual connection."""

    def __init__(self, c: int, dilation: int = 1):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.c2(F.relu(self.c1(x))))


class ImageEncoder(nn.Module):
    """x [B,7,H,W] (rgb, rgb - key, prior alpha) -> 4 feature maps at strides 8, 4, 2, 1 with ``widths`` channels
    (the image-only mode's stand-in for decoder taps, already at the lateral widths)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        w8, w4, w2, w1 = widths
        self.e1 = nn.Conv2d(IMAGE_INPUT_CHANNELS, w1, 3, padding=1)
        self.e2 = nn.Sequential(nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(w2, w2, 3, padding=1))
        self.e4 = nn.Sequential(nn.Conv2d(w2, w4, 3, stride=2, padding=1), nn.ReLU(), ResBlock(w4))
        self.e8 = nn.Sequential(nn.Conv2d(w4, w8, 3, stride=2, padding=1), nn.ReLU(), ResBlock(w8))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.relu(self.e1(x))
        f2 = F.relu(self.e2(f1))
        f4 = self.e4(f2)
        f8 = self.e8(f4)
        return [f8, f4, f2, f1]


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MattingHead(nn.Module):
    """Matting head: for a decoder whose taps have ``tap_channels`` channels at strides 8, 4, 2, 1, or, with
    ``config["inputs"] == "image"`` (``tap_channels`` empty), the image-only keyer."""

    def __init__(self, tap_channels: list[int] | None, config: dict | None = None):
        super().__init__()
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(config or {})
        if cfg["prior"] not in PRIORS:
            raise ValueError(f"config prior: expected one of {', '.join(PRIORS)}, got {cfg['prior']!r} (a head file "
                             "from a newer pack?)")
        if cfg["inputs"] not in INPUTS:
            raise ValueError(f"config inputs: expected one of {', '.join(INPUTS)}, got {cfg['inputs']!r} (a head file "
                             "from a newer pack?)")
        tap_channels = list(tap_channels or [])
        if len(cfg["lateral"]) != 4:
            raise ValueError(f"config lateral: expected 4 widths (strides 8, 4, 2, 1), got {cfg['lateral']}")
        if cfg["inputs"] == "image":
            if tap_channels:
                raise ValueError(f"tap_channels: an image-only head takes no decoder taps, got {tap_channels}")
        elif len(tap_channels) != 4:
            raise ValueError(f"tap_channels: expected 4 taps (strides 8, 4, 2, 1), got {tap_channels}")
        self.tap_channels = [int(c) for c in tap_channels]
        self.config = cfg
        lat = cfg["lateral"]
        if cfg["inputs"] == "image":
            self.encoder = ImageEncoder(lat)
        else:
            self.lateral = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(self.tap_channels, lat))
        w8, w16, w4, w2, w1 = cfg["width_8"], cfg["width_16"], cfg["width_4"], cfg["width_2"], cfg["width_1"]
        self.stem8 = nn.Conv2d(lat[0] + 4, w8, 3, padding=1)
        self.blocks8 = nn.Sequential(*[ResBlock(w8) for _ in range(cfg["blocks_8"])])
        self.down16 = nn.Conv2d(w8, w16, 3, stride=2, padding=1)
        self.blocks16 = nn.Sequential(*[ResBlock(w16, dilation=1 + (i % 2)) for i in range(cfg["blocks_16"])])
        w32 = cfg["width_32"]
        self.down32 = nn.Conv2d(w16, w32, 3, stride=2, padding=1)
        self.blocks32 = nn.Sequential(*[ResBlock(w32, dilation=1 + (i % 2)) for i in range(cfg["blocks_32"])])
        self.up32 = nn.Conv2d(w32, w16, 1)
        self.merge16 = ResBlock(w16)
        self.up16 = nn.Conv2d(w16, w8, 1)
        self.merge8 = ResBlock(w8)
        self.to4 = nn.Conv2d(w8, lat[1], 1)
        self.stage4 = nn.Sequential(nn.Conv2d(lat[1] + 4, w4, 3, padding=1), nn.ReLU(), ResBlock(w4))
        self.to2 = nn.Conv2d(w4, lat[2], 1)
        self.stage2 = nn.Sequential(nn.Conv2d(lat[2], w2, 3, padding=1), nn.ReLU(), ResBlock(w2))
        self.to1 = nn.Conv2d(w2, lat[3], 1)
        self.guide1 = nn.Conv2d(4, lat[3], 1)
        n_out = 4 if cfg["predict_fg"] else 1
        self.stage1 = nn.Sequential(
            nn.Conv2d(lat[3], w1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w1, w1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w1, n_out, 3, padding=1),
        )
        nn.init.zeros_(self.stage1[-1].weight)
        nn.init.zeros_(self.stage1[-1].bias)

    def _full_res_strips(self, x2: torch.Tensor, f1: torch.Tensor, guide: torch.Tensor, size) -> torch.Tensor:
        """x2 [B,L,h,w] (stride 2), f1 [B,L,H,W], guide [B,4,H,W] -> stage1 output [B,n,H,W], computed in strips of
        INFER_STRIP rows with a 3-row halo (three 3x3 convolutions), equal to the whole-image computation: the
        bilinear 2x upsample of a slab with one spare source row on each side matches the whole image's."""
        H, W = size
        h, w = x2.shape[-2:]
        if H != 2 * h or W != 2 * w or H <= INFER_STRIP:  # not an exact 2x (or small): whole image at once
            return self._stage1(_up(x2, (H, W)), f1, guide)
        halo = 3
        out = None
        for y0 in range(0, H, INFER_STRIP):
            y1 = min(H, y0 + INFER_STRIP)
            a0, a1 = max(0, y0 - halo), min(H, y1 + halo)
            s0, s1 = max(0, a0 // 2 - 1), min(h, (a1 + 1) // 2 + 1)
            up = _up(x2[..., s0:s1, :], (2 * (s1 - s0), W))[..., a0 - 2 * s0 : a1 - 2 * s0, :]
            x = self._stage1(up, f1[..., a0:a1, :], guide[..., a0:a1, :])
            if out is None:
                out = x.new_empty(x.shape[0], x.shape[1], H, W)
            out[..., y0:y1, :] = x[..., y0 - a0 : y0 - a0 + (y1 - y0), :]
        return out

    def _stage1(self, up: torch.Tensor, f1: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Full-resolution stage (inference, in place on ``up``): up, f1 [B,L,h,w], guide [B,4,h,w] -> [B,n,h,w]."""
        up += f1
        up += self.guide1(guide)
        x = F.relu_(up)
        x = F.relu_(self.stage1[0](x))
        x = F.relu_(self.stage1[2](x))
        return self.stage1[4](x)

    def prior(self, rgb: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """rgb [B,3,H,W] in [0,1], key [B,3] or [3] -> the prior alpha [B,1,H,W] this head corrects (its config's
        ``prior``)."""
        return prior_alpha(rgb, key, self.config["prior"])

    @property
    def predicts_fg(self) -> bool:
        return bool(self.config["predict_fg"])

    @property
    def image_only(self) -> bool:
        """True for the learned keyer (no decoder taps; ``forward(None, rgb, prior, key=...)``)."""
        return self.config["inputs"] == "image"

    def encode_image(self, rgb: torch.Tensor, key_alpha: torch.Tensor, key: torch.Tensor) -> list[torch.Tensor]:
        """rgb [B,3,H,W] in [0,1], key_alpha [B,1,H,W], key [B,3] in [0,1] -> the image-only mode's 4 feature maps."""
        k = key.to(rgb).reshape(-1, 3, 1, 1)
        return self.encoder(torch.cat([rgb, rgb - k, key_alpha], 1))

    def project(self, index: int, feature: torch.Tensor) -> torch.Tensor:
        """Tap ``index`` (0 = stride 8 ... 3 = stride 1): [B,C_i,h,w] -> [B,lateral_i,h,w] in the head's dtype."""
        w = self.lateral[index].weight
        return self.lateral[index](feature.to(device=w.device, dtype=w.dtype))

    def forward(self, taps: list[torch.Tensor] | None, rgb: torch.Tensor, key_alpha: torch.Tensor,
                projected: bool = False, key: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """taps: 4 x [B,C_i,H/s,W/s] (s = 8,4,2,1) or None (image-only mode, which needs ``key`` [B,3] in [0,1]),
        rgb [B,3,H,W] in [0,1], key_alpha [B,1,H,W] in [0,1]
        -> {"alpha": [B,1,H,W] in [0,1], "fg": [B,3,H,W] in [0,1] (when predict_fg), "logits": [B,1,H,W]}."""
        dtype = self.stem8.weight.dtype
        rgb = rgb.to(dtype)
        key_alpha = key_alpha.to(dtype)
        if self.image_only:
            if key is None:
                raise ValueError("key: the image-only head needs the key colour [B,3] the prior was keyed against")
            f = self.encode_image(rgb, key_alpha, key)
        elif taps is None or len(taps) != 4:
            raise ValueError(f"taps: expected 4 feature maps (strides 8, 4, 2, 1), got {0 if taps is None else len(taps)}")
        else:
            f = taps if projected else [self.project(i, t) for i, t in enumerate(taps)]
        f = [t.to(dtype) for t in f]
        del taps  # with projected taps passed inline, the full-resolution one is freed once used (inference)
        H, W = rgb.shape[-2:]
        guide = torch.cat([rgb, key_alpha], 1)
        g8 = F.adaptive_avg_pool2d(guide, f[0].shape[-2:])
        x = F.relu(self.stem8(torch.cat([f[0], g8], 1)))
        x = self.blocks8(x)
        c = self.blocks16(F.relu(self.down16(x)))
        d = self.blocks32(F.relu(self.down32(c)))
        c = self.merge16(c + _up(self.up32(d), c.shape[-2:]))
        x = self.merge8(x + _up(self.up16(c), x.shape[-2:]))
        g4 = F.adaptive_avg_pool2d(guide, f[1].shape[-2:])
        x = self.stage4(torch.cat([_up(self.to4(x), f[1].shape[-2:]) + f[1], g4], 1))
        x = self.stage2(_up(self.to2(x), f[2].shape[-2:]) + f[2])
        if torch.is_grad_enabled():
            x = F.relu(_up(self.to1(x), (H, W)) + f[3] + self.guide1(guide))
            out = self.stage1(x)
        else:  # inference: the full-resolution stage in horizontal strips (peak memory: no full-size activations)
            out = self._full_res_strips(self.to1(x), f[3], guide, (H, W))
            f[3] = None
        prior = torch.logit(key_alpha.clamp(1e-3, 1 - 1e-3)).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        logits = prior + out[:, :1]
        result = {"alpha": torch.sigmoid(logits), "logits": logits}
        if self.predicts_fg:
            result["fg"] = (rgb + out[:, 1:4]).clamp(0, 1)
        return result


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
