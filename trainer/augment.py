"""The trainers' augmentations: one kornia colour jitter, key-colour canvases (flat or a lit screen), the head's
random key colours and crops. Every draw comes from the ``torch.Generator`` passed in (see ``trainer.seeding``),
so a sample is a pure function of its generator's seed."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..common.keycolour import parse_key_colour
from .seeding import uniform

PURE_GREEN = parse_key_colour("pure_green").rgb  # (0, 1, 0)
CHROMA_GREEN = parse_key_colour("chroma_green").rgb  # #00B140


@dataclass(frozen=True)
class ColourJitter:
    """Random colour changes of a straight foreground (kornia.enhance), each factor drawn uniformly:
    gain ``1 +- brightness``, contrast about the mean ``1 +- contrast``, saturation ``1 +- saturation``, hue shift
    ``+- hue`` radians, gamma ``exp(+- gamma)``. All zero = identity."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "hue", "gamma"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a jitter strength in [0,1], got {v!r}")

    @classmethod
    def strength(cls, s: float) -> "ColourJitter":
        """One knob (the LoRA trainer's ``jitter``): brightness, contrast and saturation ``s``, hue ``s * pi/5``."""
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"jitter: expected a strength in [0,1], got {s!r}")
        return cls(s, s, s, min(1.0, s * math.pi / 5), 0.0)

    def __call__(self, rgb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """rgb: [3,H,W] or [B,3,H,W] in [0,1] -> the same shape in [0,1] (one draw of five factors per call)."""
        import kornia.enhance as KE

        f = [uniform(g, -1.0, 1.0) for _ in range(5)]  # always five draws: streams stay aligned
        if not any((self.brightness, self.contrast, self.saturation, self.hue, self.gamma)):
            return rgb
        x = rgb[None] if rgb.ndim == 3 else rgb
        x = (x * (1.0 + self.brightness * f[0])).clamp(0, 1)
        if self.contrast:
            x = KE.adjust_contrast_with_mean_subtraction(x, 1.0 + self.contrast * f[1])
        if self.saturation:
            x = KE.adjust_saturation(x, 1.0 + self.saturation * f[2])
        if self.hue:
            x = KE.adjust_hue(x, self.hue * f[3])
        x = x.clamp(0, 1)
        if self.gamma:
            x = KE.adjust_gamma(x, math.exp(self.gamma * f[4]))
        x = x.clamp(0, 1)
        return x[0] if rgb.ndim == 3 else x


HEAD_JITTER = ColourJitter(brightness=0.2, contrast=0.0, saturation=0.3, hue=0.0, gamma=0.25)


def green_canvas(h: int, w: int, key, realistic: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """(h, w, key [3] in [0,1]) -> canvas [3,h,w] in [0,1]. Clean: the flat key colour. Realistic: a lit screen,
    i.e. the key with a linear light gradient (up to +-12 %), vignetting (up to -15 % in the corners),
    low-frequency unevenness (+-4 %), a slight hue drift and sensor noise (sigma 0.01)."""
    key = torch.as_tensor(key, dtype=torch.float32).reshape(3, 1, 1)
    canvas = key.expand(3, h, w).clone()
    if not realistic:
        return canvas
    g = generator or torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ang = torch.rand(1, generator=g).item() * 2 * math.pi
    grad = 0.12 * (xx * math.cos(ang) + yy * math.sin(ang)) * torch.rand(1, generator=g).item()
    vign = -0.15 * torch.rand(1, generator=g).item() * (xx ** 2 + yy ** 2) / 2
    low = F.interpolate(torch.randn(1, 1, 4, 4, generator=g), size=(h, w), mode="bicubic", align_corners=False)[0, 0]
    shade = 1 + grad + vign + 0.04 * low.clamp(-2, 2) / 2
    hue = F.interpolate(torch.randn(1, 3, 3, 3, generator=g), size=(h, w), mode="bicubic", align_corners=False)[0]
    canvas = canvas * shade + 0.02 * hue.clamp(-2, 2) / 2
    canvas = canvas + 0.01 * torch.randn(3, h, w, generator=g)
    return canvas.clamp(0, 1)


def random_key(g: torch.Generator, other_keys: bool = True) -> torch.Tensor:
    """A key colour -> [3] in [0,1]: pure green, chroma green or a random green (hue 105-140 deg); with
    ``other_keys`` also a random blue (hue 205-235 deg, 15 %) or magenta (hue 290-320 deg, 5 %)."""
    u = torch.rand(1, generator=g).item()
    hues = (105, 140)
    if u < 0.35:
        return torch.tensor(PURE_GREEN, dtype=torch.float32)
    if u < 0.55:
        return torch.tensor(CHROMA_GREEN, dtype=torch.float32)
    if other_keys and u >= 0.95:
        hues = (290, 320)
    elif other_keys and u >= 0.8:
        hues = (205, 235)
    hue = (hues[0] + (hues[1] - hues[0]) * torch.rand(1, generator=g).item()) / 360
    sat = 0.7 + 0.3 * torch.rand(1, generator=g).item()
    val = 0.55 + 0.45 * torch.rand(1, generator=g).item()
    return torch.tensor(colorsys.hsv_to_rgb(hue, sat, val), dtype=torch.float32)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x [C,H,W] -> Gaussian blur (kornia), sigma in px (kernel 4 sigma each side, reflect padding)."""
    import kornia.filters as KF

    k = 2 * max(1, math.ceil(3 * sigma)) + 1
    k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
    return KF.gaussian_blur2d(x[None], (k, k), (sigma, sigma), border_type="reflect")[0]


def spill_and_shadow(fg: torch.Tensor, alpha: torch.Tensor, canvas: torch.Tensor, key: torch.Tensor,
                     g: torch.Generator, spill: float = 0.3, shadow: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """fg [3,H,W] straight, alpha [1,H,W], canvas [3,H,W], key [3], all in [0,1] -> (fg with key-colour spill near
    its edges, canvas with a soft drop shadow of the subject), each strength drawn in [0, ``spill``] / [0,
    ``shadow``]. Spill is screen light reflected by the subject: its albedo times the key colour, strongest where
    the subject is thin or near the screen; the ground truth colour stays the unspilled ``fg``."""
    h, w = alpha.shape[-2:]
    size = max(h, w)
    near = 1 - _blur(alpha, max(1.0, 0.02 * size))  # how much screen surrounds each pixel
    s = spill * uniform(g, 0.0, 1.0)
    fg = (fg + s * near * key.view(3, 1, 1) * fg.mean(0, keepdim=True)).clamp(0, 1)
    k = shadow * uniform(g, 0.0, 1.0)
    dy, dx = round(uniform(g, -0.06, 0.06) * h), round(uniform(g, -0.06, 0.06) * w)
    cast = torch.roll(alpha, shifts=(dy, dx), dims=(-2, -1))
    canvas = canvas * (1 - k * _blur(cast, max(1.0, 0.03 * size)))
    return fg, canvas


def degrade(image: torch.Tensor, g: torch.Generator, jpeg: float = 0.4, subsample: float = 0.15,
            noise: float = 0.5) -> torch.Tensor:
    """image [3,H,W] in [0,1] -> what a file or generator hands over: with probability ``noise`` Gaussian noise
    (sigma up to 0.02), then 8-bit, then with probability ``jpeg`` JPEG (quality 70-95, OpenCV's 4:2:0 chroma) or
    else with probability ``subsample`` 4:2:0 chroma alone (video). [3,H,W] in [0,1], 8-bit values."""
    import cv2
    import numpy as np

    u_noise, sigma, u_codec, quality = (uniform(g, 0.0, 1.0) for _ in range(4))
    x = image
    if u_noise < noise:
        x = x + 0.02 * sigma * torch.randn(x.shape, generator=g)
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if u_codec < jpeg:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(x8[..., ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, int(70 + 25 * quality)])
        x8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    elif u_codec < jpeg + subsample:
        ycc = cv2.cvtColor(np.ascontiguousarray(x8), cv2.COLOR_RGB2YCrCb)
        h, w = ycc.shape[:2]
        for c in (1, 2):
            small = cv2.resize(ycc[..., c], ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
            ycc[..., c] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        x8 = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    return torch.from_numpy(np.ascontiguousarray(x8)).permute(2, 0, 1).float() / 255


def random_crop(fg, alpha, size: int, g: torch.Generator, scale=(0.3, 1.0), focus_edges: float = 0.6):
    """fg [3,H,W], alpha [1,H,W] -> (fg [3,s,s], alpha [1,s,s]) with s = ``size``: scaled, maybe flipped, cropped
    (padded with alpha 0 when smaller), centred on a transition pixel with probability ``focus_edges``."""
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item()
    h, w = alpha.shape[-2:]
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    fg = F.interpolate(fg[None], size=(nh, nw), mode="area" if s < 1 else "bilinear")[0]
    alpha = F.interpolate(alpha[None], size=(nh, nw), mode="area" if s < 1 else "bilinear")[0]
    if torch.rand(1, generator=g).item() < 0.5:
        fg, alpha = fg.flip(-1), alpha.flip(-1)
    if nh < size or nw < size:
        ph, pw = max(0, size - nh), max(0, size - nw)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        fg = F.pad(fg, pad, mode="replicate")
        alpha = F.pad(alpha, pad)
        nh, nw = alpha.shape[-2:]
    part = ((alpha > 0.02) & (alpha < 0.98))[0].nonzero()
    if len(part) and torch.rand(1, generator=g).item() < focus_edges:
        cy, cx = part[torch.randint(len(part), (1,), generator=g)].tolist()[0]
        y0 = min(max(0, cy - size // 2), nh - size)
        x0 = min(max(0, cx - size // 2), nw - size)
    else:
        y0 = int(torch.randint(0, nh - size + 1, (1,), generator=g))
        x0 = int(torch.randint(0, nw - size + 1, (1,), generator=g))
    return fg[:, y0:y0 + size, x0:x0 + size], alpha[:, y0:y0 + size, x0:x0 + size]


def crop_to_multiple(x: torch.Tensor, m: int = 8) -> torch.Tensor:
    """x [...,H,W] -> [...,H - H % m, W - W % m] (top-left crop)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % m, : w - w % m]


def over(fg: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """fg [3,H,W] or [B,3,H,W] straight, alpha [..,1,H,W], background [..,3,H,W] or a colour [3], all in [0,1] ->
    the composite ``a*F + (1-a)*B`` in fg's shape, through :func:`compositing.alpha_over` (the one composite)."""
    from ..compositing import alpha_over

    single = fg.ndim == 3
    f, a = (fg[None], alpha[None]) if single else (fg, alpha)
    b = background
    if b.ndim == 1:
        b = b.to(f).view(1, 3, 1, 1).expand(1, 3, *f.shape[-2:])
    elif b.ndim == 3:
        b = b[None]
    out = alpha_over(f, a, b)
    return out[0] if single else out
