"""Training/evaluation data for the matting head: (foreground, alpha) pairs composited onto green canvases."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PURE_GREEN = (0.0, 1.0, 0.0)
CHROMA_GREEN = (0.0, 177 / 255, 64 / 255)


@dataclass
class Pair:
    name: str
    fg: torch.Tensor  # [3,H,W] in [0,1] straight colour (or the photo, when no fg file exists)
    alpha: torch.Tensor  # [1,H,W] in [0,1]


def load_pairs(folder: str | os.PathLike, names: list[str] | None = None) -> list[Pair]:
    """Folder of subjects -> pairs. Layouts: ``<subject>/alpha.png`` + ``fg.png`` or ``image.png``; or the data-set
    layout ``alpha/<n>.png`` + ``fg/<n>.png`` (or ``image/<n>.png``). ``names`` keeps only those subjects."""
    from ..common.images import load_image

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"data: {folder} is not a folder")
    items: list[tuple[str, str, str]] = []
    if os.path.isdir(os.path.join(folder, "alpha")):
        for fn in sorted(os.listdir(os.path.join(folder, "alpha"))):
            stem = os.path.splitext(fn)[0]
            for sub in ("fg", "image"):
                cands = [f for f in os.listdir(os.path.join(folder, sub)) if os.path.splitext(f)[0] == stem] \
                    if os.path.isdir(os.path.join(folder, sub)) else []
                if cands:
                    items.append((stem, os.path.join(folder, sub, cands[0]), os.path.join(folder, "alpha", fn)))
                    break
    else:
        for sub in sorted(os.listdir(folder)):
            d = os.path.join(folder, sub)
            if not os.path.isfile(os.path.join(d, "alpha.png")):
                continue
            colour = next((os.path.join(d, f) for f in ("fg.png", "image.png") if os.path.isfile(os.path.join(d, f))),
                          None)
            if colour:
                items.append((sub, colour, os.path.join(d, "alpha.png")))
    if names is not None:
        missing = sorted(set(names) - {n for n, _, _ in items})
        if missing:
            raise ValueError(f"data: subjects {missing} not found in {folder}")
        items = [it for it in items if it[0] in names]
    if not items:
        raise ValueError(f"data: no (fg or image, alpha) pairs found in {folder} (expected <subject>/alpha.png "
                         "with fg.png or image.png, or alpha/ and fg/ folders)")
    pairs = []
    for name, cpath, apath in items:
        rgb = load_image(cpath).rgb
        a = load_image(apath).rgb[:1]
        if rgb.shape[-2:] != a.shape[-2:]:
            raise ValueError(f"data: {name}: colour {tuple(rgb.shape[-2:])} and alpha {tuple(a.shape[-2:])} sizes differ")
        pairs.append(Pair(name, rgb, a))
    return pairs


def green_canvas(h: int, w: int, key, realistic: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """-> [3,h,w] in [0,1]. Clean: the flat key colour. Realistic: a lit screen, i.e. the key with a linear light
    gradient (up to +-12 %), vignetting (up to -15 % in the corners), low-frequency unevenness (+-4 %), a slight
    hue drift and sensor noise (sigma 0.01)."""
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


def composite(fg: torch.Tensor, alpha: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """fg [..,3,H,W], alpha [..,1,H,W], canvas [..,3,H,W] (all [0,1]) -> alpha*fg + (1-alpha)*canvas."""
    return alpha * fg + (1 - alpha) * canvas


def random_key(g: torch.Generator) -> torch.Tensor:
    """A green key colour: pure green, chroma green or a random green (hue 105-140 deg) -> [3]."""
    u = torch.rand(1, generator=g).item()
    if u < 0.4:
        return torch.tensor(PURE_GREEN)
    if u < 0.65:
        return torch.tensor(CHROMA_GREEN)
    hue = (105 + 35 * torch.rand(1, generator=g).item()) / 360
    sat = 0.7 + 0.3 * torch.rand(1, generator=g).item()
    val = 0.55 + 0.45 * torch.rand(1, generator=g).item()
    import colorsys

    return torch.tensor(colorsys.hsv_to_rgb(hue, sat, val), dtype=torch.float32)


def jitter_colour(fg: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness, saturation and gamma jitter of a [3,H,W] image in [0,1]."""
    b = 0.8 + 0.4 * torch.rand(1, generator=g).item()
    s = 0.7 + 0.6 * torch.rand(1, generator=g).item()
    gam = math.exp((torch.rand(1, generator=g).item() - 0.5) * 0.5)
    grey = fg.mean(0, keepdim=True)
    out = (grey + (fg - grey) * s) * b
    return out.clamp(0, 1) ** gam


def random_crop(fg, alpha, size: int, g: torch.Generator, scale=(0.3, 1.0), focus_edges: float = 0.6):
    """Scale, flip and crop a pair to ``size`` px (padding with alpha 0 when needed) -> (fg [3,s,s], alpha [1,s,s])."""
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
    """[..,H,W] -> [..,H - H % m, W - W % m] (top-left crop)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % m, : w - w % m]
