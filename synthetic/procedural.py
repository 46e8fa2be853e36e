"""Fine-structure procedural (fg, alpha) pairs: soft blobs with fuzzy edges, thin strands, meshes with holes,
semi-transparent layers, and dense fine structure (feathers, dandelion-like tufts, fur) where most of the object
is sub-pixel detail that a small latent decoder cannot reproduce exactly. Drawn from a ``torch.Generator``, so a
sample is a pure function of ``(size, seed)``. The "fine" family of :func:`synthetic.synthetic_matte`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _smooth_noise(g: torch.Generator, c: int, h: int, w: int, cells: int) -> torch.Tensor:
    """[c,h,w] smooth noise in about [-1,1] from a bicubic-upsampled random grid with ``cells`` cells."""
    base = torch.randn(1, c, cells + 3, cells + 3, generator=g)
    up = F.interpolate(base, size=(h + 2 * (h // cells + 1), w + 2 * (w // cells + 1)), mode="bicubic",
                       align_corners=False)
    oy, ox = (up.shape[-2] - h) // 2, (up.shape[-1] - w) // 2
    return up[0, :, oy:oy + h, ox:ox + w].clamp(-2.5, 2.5) / 2.5


def _texture(g: torch.Generator, h: int, w: int) -> torch.Tensor:
    """[3,h,w] colourful texture in [0,1] (smooth colour field plus fine detail)."""
    base = torch.rand(3, 1, 1, generator=g)
    tex = base + 0.35 * _smooth_noise(g, 3, h, w, 4) + 0.12 * _smooth_noise(g, 3, h, w, 24)
    if torch.rand(1, generator=g).item() < 0.5:  # desaturate sometimes (hair, fur, grey objects)
        tex = tex.mean(0, keepdim=True).expand(3, h, w) * 0.7 + tex * 0.3
    return tex.clamp(0, 1)


def _blob(g, h, w):
    n = _smooth_noise(g, 1, h, w, int(torch.randint(2, 6, (1,), generator=g)))[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = (xx ** 2 + yy ** 2).sqrt()
    field = n * 0.6 + (0.75 - r)
    edge = 10 ** torch.empty(1).uniform_(-2.3, -0.8, generator=g).item()
    a = torch.sigmoid(field / edge)
    if torch.rand(1, generator=g).item() < 0.5:  # fuzzy / furry boundary
        fine = _smooth_noise(g, 1, h, w, int(torch.randint(30, 90, (1,), generator=g)))[0]
        band = torch.exp(-(field / 0.08) ** 2)
        a = (a + band * fine * 0.8).clamp(0, 1)
    return a


def _strands(g, h, w):
    a = torch.zeros(h, w)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    n = int(torch.randint(5, 40, (1,), generator=g))
    cx, cy = torch.rand(2, generator=g) * torch.tensor([w, h])
    for _ in range(n):
        ang = torch.rand(1, generator=g).item() * 2 * math.pi
        curv = (torch.rand(1, generator=g).item() - 0.5) * 0.01
        length = (0.3 + 0.7 * torch.rand(1, generator=g).item()) * max(h, w)
        width = 0.3 + 2.5 * torch.rand(1, generator=g).item() ** 2
        opacity = 0.4 + 0.6 * torch.rand(1, generator=g).item()
        pts = []
        x, y, t = cx.item(), cy.item(), ang
        for _ in range(int(length / 4)):
            pts.append((x, y))
            x += 4 * math.cos(t)
            y += 4 * math.sin(t)
            t += curv * 4
        p = torch.tensor(pts)
        # distance to polyline vertices (dense enough at step 4 px with width-aware falloff)
        d = torch.full((h, w), 1e9)
        for chunk in p.split(64):
            dd = ((xx[None] - chunk[:, 0, None, None]) ** 2 + (yy[None] - chunk[:, 1, None, None]) ** 2).amin(0)
            d = torch.minimum(d, dd)
        d = d.sqrt()
        a = torch.maximum(a, opacity * (1 - ((d - width) / 1.5).clamp(0, 1)) * (d < width + 2.5))
    return a


def _mesh(g, h, w):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ang = torch.rand(1, generator=g).item() * math.pi
    period = 6 + 20 * torch.rand(1, generator=g).item()
    thick = 0.15 + 0.35 * torch.rand(1, generator=g).item()
    u = xx * math.cos(ang) + yy * math.sin(ang)
    v = -xx * math.sin(ang) + yy * math.cos(ang)
    lines = lambda t: ((torch.cos(2 * math.pi * t / period) + 1) / 2 > 1 - thick).float()  # noqa: E731
    m = torch.maximum(lines(u), lines(v))
    m = F.avg_pool2d(m[None, None], 3, 1, 1)[0, 0]
    return m * _blob(g, h, w).gt(0.5).float()


def _feathers(g, h, w):
    """[h,w] dense fine structure: shafts radiating from a centre (a fan, or all round like a dandelion), each with
    barbs branching off at an angle. Drawn with anti-aliased lines at 2x and area-downsampled, so widths are
    sub-pixel; overlapping layers combine as stacked transparencies, 1 - prod(1 - a_i)."""
    import cv2
    import numpy as np

    rnd = lambda lo, hi: lo + (hi - lo) * torch.rand(1, generator=g).item()  # noqa: E731
    fix = lambda p: (int(round(p[0] * 16)), int(round(p[1] * 16)))  # noqa: E731  (cv2 shift=4: 4 fractional bits)
    ss = 2  # supersampling
    H, W = h * ss, w * ss
    size = max(h, w)
    cx, cy = rnd(-0.2, 1.2) * W, rnd(0.3, 1.3) * H
    spread = rnd(0.5, 2 * math.pi)
    base_ang = rnd(0, 2 * math.pi)
    n = int(rnd(12, 70))
    length = rnd(0.4, 1.3) * size * ss
    barb_len = rnd(0.01, 0.06) * size * ss
    barb_step = rnd(1.5, 5) * ss
    barb_ang = rnd(0.3, 1.0)
    shaft_w = max(1, round(rnd(0.6, 2.5) * ss))
    clear = np.ones((H, W), np.float32)  # transparency left after all layers
    for _ in range(n):
        ang = base_ang + (torch.rand(1, generator=g).item() - 0.5) * spread
        ln = length * rnd(0.6, 1.0)
        start = ln * rnd(0.0, 0.25)
        op = rnd(0.4, 1.0)
        layer = np.zeros((H, W), np.uint8)
        ca, sa = math.cos(ang), math.sin(ang)
        p0 = (cx + start * ca, cy - start * sa)
        p1 = (cx + ln * ca, cy - ln * sa)
        cv2.line(layer, fix(p0), fix(p1), 255, shaft_w, cv2.LINE_AA, 4)
        t = start
        while t < ln:
            q = (cx + t * ca, cy - t * sa)
            frac = 1 - (t - start) / max(ln - start, 1)
            bl = barb_len * (0.4 + 0.6 * frac) * rnd(0.7, 1.3)
            for side in (-1, 1):
                b = ang + side * barb_ang
                cv2.line(layer, fix(q), fix((q[0] + bl * math.cos(b), q[1] - bl * math.sin(b))),
                         int(255 * rnd(0.3, 1.0)), 1, cv2.LINE_AA, 4)
            t += barb_step * rnd(0.7, 1.3)
        clear *= 1 - op * layer.astype(np.float32) / 255
    a = cv2.resize(1 - clear, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(a).clamp(0, 1)


def fine_matte(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w, seed) -> (fg [3,h,w] in [0,1], alpha [1,h,w] in [0,1]); deterministic for a seed (sizes checked by
    the caller, :func:`synthetic.synthetic_matte`)."""
    g = torch.Generator().manual_seed(int(seed))
    kind = torch.rand(1, generator=g).item()
    if kind < 0.3:
        a = _blob(g, h, w)
    elif kind < 0.45:
        a = torch.maximum(_blob(g, h, w) * (torch.rand(1, generator=g).item() < 0.5), _strands(g, h, w))
    elif kind < 0.6:
        a = _mesh(g, h, w)
    elif kind < 0.85:  # dense fine structure, sometimes over an opaque core
        a = _feathers(g, h, w)
        if torch.rand(1, generator=g).item() < 0.3:
            a = torch.maximum(a, _blob(g, h, w))
    else:
        a = _blob(g, h, w)
        holes = _smooth_noise(g, 1, h, w, int(torch.randint(6, 16, (1,), generator=g)))[0]
        a = a * torch.sigmoid((holes - 0.2) / 0.05)
    if torch.rand(1, generator=g).item() < 0.2:  # semi-transparent object
        a = a * (0.3 + 0.6 * torch.rand(1, generator=g).item())
    return _texture(g, h, w), a.clamp(0, 1)[None]
