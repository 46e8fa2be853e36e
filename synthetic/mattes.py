"""Procedural (fg, alpha) pairs with matting-level detail.

Each sample is a textured foreground colour layer and an alpha made of: one to three solid shapes (ellipses,
noisy star polygons, rounded rectangles) with edges from sharp to very soft, sometimes a hole, hair-like strands
(thin anti-aliased curves of partial coverage) growing out of the shapes, and sometimes a semi-transparent veil
with a linear gradient. Everything is drawn with OpenCV from a NumPy generator seeded by ``seed``, so a sample is
a pure function of ``(size, seed)``.

That is the ``"shapes"`` family; ``family="fine"`` draws the fine-structure family of :mod:`synthetic.procedural`
(fuzzy blobs, strands, meshes, feathers and dandelion-like tufts: mostly sub-pixel partial coverage, not always
with an opaque core), and ``"mixed"`` picks one of the two from the seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

MIN_SIZE = 16
FAMILIES = ("shapes", "fine", "mixed")


def _parse_size(size) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ValueError(f"size: expected an int or an (h, w) pair of ints >= {MIN_SIZE}, got {size!r}")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size
    ):
        h, w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"size: expected an int or an (h, w) pair of ints >= {MIN_SIZE}, got {size!r}")
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"size: expected sides >= {MIN_SIZE} px, got {(h, w)}")
    return h, w


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """[h,w] float32 smooth value noise in [0,1] with about ``cells`` features across the shorter side."""
    import cv2

    cells = max(2, int(cells))
    gh = max(2, round(cells * h / min(h, w)))
    gw = max(2, round(cells * w / min(h, w)))
    grid = rng.random((gh, gw), dtype=np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """[3] RGB in [0,1], never chroma-key green dominant (green must stay the canvas, not the subject)."""
    c = rng.random(3).astype(np.float32)
    if c[1] > max(c[0], c[2]) + 0.1:  # green-dominant: swap green with the larger other channel
        j = 0 if c[0] >= c[2] else 2
        c[1], c[j] = c[j], c[1]
    return c


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h,w,3] float32 textured foreground in [0,1]: colour mix by multi-octave noise, optional stripes/fibres."""
    c1, c2, c3 = _random_colour(rng), _random_colour(rng), _random_colour(rng)
    n1 = _smooth_noise(rng, h, w, rng.integers(2, 6))
    n2 = _smooth_noise(rng, h, w, rng.integers(8, 24))
    img = c1 * n1[..., None] + c2 * (1.0 - n1[..., None])
    img = img * (1.0 - 0.35 * n2[..., None]) + c3 * (0.35 * n2[..., None])
    kind = rng.integers(0, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 1:  # stripes
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(0.03, 0.15) * min(h, w)
        s = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * (2 * math.pi / period))
        img = img * (0.75 + 0.25 * s[..., None])
    elif kind == 2:  # fine grain, like fur or fabric
        grain = rng.random((h, w), dtype=np.float32)
        img = img * (0.85 + 0.3 * (grain[..., None] - 0.5))
    # gentle shading
    shade = 0.8 + 0.2 * _smooth_noise(rng, h, w, 2)
    return np.clip(img * shade[..., None], 0.0, 1.0).astype(np.float32)


def _star_polygon(rng: np.random.Generator, cx: float, cy: float, r: float, n: int) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * math.pi, n))
    radii = r * rng.uniform(0.55, 1.0, n)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits for cv2 shift=4


def _body(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h,w] float32 solid shapes (1 inside) with soft or sharp edges, maybe with a hole."""
    import cv2

    # OpenCV anti-aliases only 8-bit canvases: draw at 255 and scale to [0,1] afterwards.
    m = np.zeros((h, w), np.uint8)
    s = min(h, w)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        r = rng.uniform(0.12, 0.3) * s
        kind = rng.integers(0, 3)
        if kind == 0:
            axes = (int(r * 16), int(r * rng.uniform(0.5, 1.0) * 16))
            cv2.ellipse(m, (int(cx * 16), int(cy * 16)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                        cv2.LINE_AA, 4)
        elif kind == 1:
            cv2.fillPoly(m, [_star_polygon(rng, cx, cy, r, int(rng.integers(5, 14)))], 255, cv2.LINE_AA, 4)
        else:
            rw, rh = r * rng.uniform(0.6, 1.2), r * rng.uniform(0.6, 1.2)
            rect = ((cx, cy), (2 * rw, 2 * rh), float(rng.uniform(0, 90)))
            box = np.round(cv2.boxPoints(rect) * 16).astype(np.int32)
            cv2.fillPoly(m, [box], 255, cv2.LINE_AA, 4)
    m = m.astype(np.float32) / 255.0
    if rng.random() < 0.3:  # a hole (e.g. a handle, the gap between arm and body)
        ys, xs = np.nonzero(m > 0.99)
        if len(ys):
            i = int(rng.integers(0, len(ys)))
            rr = rng.uniform(0.03, 0.08) * s
            hole = np.zeros((h, w), np.uint8)
            cv2.circle(hole, (int(xs[i] * 16), int(ys[i] * 16)), int(rr * 16), 255, -1, cv2.LINE_AA, 4)
            m = m * (1.0 - hole.astype(np.float32) / 255.0)
    # edge softness: from a crisp anti-aliased edge to a wide defocus-like ramp
    sigma = float(rng.choice([0.0, rng.uniform(0.5, 1.5), rng.uniform(1.5, 0.02 * s + 2)]))
    if sigma > 0:
        m = cv2.GaussianBlur(m, (0, 0), sigma)
        m = m / max(0.9 * float(m.max()), 1e-6)  # keep an opaque core even when the blur is wide for the shape
    return np.clip(m, 0.0, 1.0)


def _strands(rng: np.random.Generator, body: np.ndarray, count: int) -> np.ndarray:
    """[h,w] float32 hair-like strands: thin curved lines of partial coverage rooted on the body's edge."""
    import cv2

    h, w = body.shape
    s = min(h, w)
    out = np.zeros((h, w), np.float32)
    edge = (body > 0.3) & (body < 0.9)
    ys, xs = np.nonzero(edge)
    if len(ys) == 0:
        ys, xs = np.nonzero(body > 0.5)
    if len(ys) == 0:
        return out
    cy, cx = np.mean(ys), np.mean(xs)
    for _ in range(count):
        i = int(rng.integers(0, len(ys)))
        x0, y0 = float(xs[i]), float(ys[i])
        d = math.atan2(y0 - cy, x0 - cx) + rng.normal(0, 0.5)  # outward, with spread
        length = rng.uniform(0.05, 0.25) * s
        curl = rng.normal(0, 0.03)
        n = max(4, int(length / 2))
        pts = []
        x, y = x0, y0
        for _k in range(n):
            pts.append((x, y))
            d += curl + rng.normal(0, 0.05)
            x += math.cos(d) * length / n
            y += math.sin(d) * length / n
        poly = np.round(np.array(pts) * 16).astype(np.int32)
        layer = np.zeros((h, w), np.uint8)
        cv2.polylines(layer, [poly], False, int(rng.uniform(0.35, 1.0) * 255), 1, cv2.LINE_AA, 4)
        out = np.maximum(out, layer.astype(np.float32) / 255.0)
    return out


def _veil(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h,w] float32 semi-transparent region (glass, smoke, fabric) with a linear gradient, max below 1."""
    import cv2

    region = np.zeros((h, w), np.uint8)
    s = min(h, w)
    cx, cy = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
    axes = (int(rng.uniform(0.1, 0.35) * s * 16), int(rng.uniform(0.1, 0.35) * s * 16))
    cv2.ellipse(region, (int(cx * 16), int(cy * 16)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                cv2.LINE_AA, 4)
    region = cv2.GaussianBlur(region.astype(np.float32) / 255.0, (0, 0), rng.uniform(0.5, 0.03 * s + 1))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    g = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    lo, hi = rng.uniform(0.1, 0.4), rng.uniform(0.5, 0.85)
    return region * (lo + (hi - lo) * g)


def synthetic_matte(size, seed: int, family: str = "shapes") -> tuple[torch.Tensor, torch.Tensor]:
    """size: int | (h, w), seed: int >= 0 -> (fg [3,H,W], alpha [1,H,W]) float32 in [0,1] (alpha 1 = opaque).

    ``fg`` is straight (not premultiplied) and covers the whole frame. ``"shapes"``: ``alpha`` always has an
    opaque core and a transition region (0 < alpha < 1); ``"fine"``: fine structure (see module doc); ``"mixed"``:
    either, chosen by the seed. Deterministic per ``(size, seed, family)``.
    """
    h, w = _parse_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    if family == "mixed":
        family = FAMILIES[int(np.random.default_rng([int(seed), 1]).integers(0, 2))]
    if family == "fine":
        from .procedural import fine_matte

        return fine_matte(h, w, int(seed))
    rng = np.random.default_rng(int(seed))
    fg = _texture(rng, h, w)
    body = _body(rng, h, w)
    alpha = body
    n_strands = int(rng.choice([0, rng.integers(10, 60), rng.integers(60, 250)]))
    if n_strands:
        strands = _strands(rng, body, n_strands)
        alpha = alpha + strands * (1.0 - alpha)
        # strands are often a different tone (lighter tips)
        tint = _random_colour(rng)
        fg = fg * (1.0 - 0.5 * strands[..., None]) + tint * (0.5 * strands[..., None])
    if rng.random() < 0.35:
        veil = _veil(rng, h, w)
        alpha = alpha + veil * (1.0 - alpha)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    fg_t = torch.from_numpy(np.ascontiguousarray(np.clip(fg, 0.0, 1.0).transpose(2, 0, 1))).float()
    alpha_t = torch.from_numpy(alpha)[None].float()
    return fg_t, alpha_t


def synthetic_batch(count: int, size, seed: int, family: str = "shapes") -> tuple[torch.Tensor, torch.Tensor]:
    """count >= 1 samples with seeds seed .. seed+count-1 -> (fg [B,3,H,W], alpha [B,1,H,W]) float32 in [0,1]."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected an int >= 1, got {count!r}")
    pairs = [synthetic_matte(size, seed + i, family) for i in range(int(count))]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def write_synthetic_folder(out_dir, count: int, size, seed: int = 0, caption: str | None = "an object") -> list[str]:
    """Write ``count`` samples as ``<out_dir>/synth_<seed>/{fg.png, alpha.png, caption.txt}`` (atomic PNGs).

    The layout is one the trainer's data builder reads. Returns the sample folder paths.
    """
    import os

    from ..common.files import atomic_write_text
    from ..common.images import save_png

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count: expected an int >= 1, got {count!r}")
    paths = []
    for i in range(int(count)):
        fg, alpha = synthetic_matte(size, seed + i)
        folder = os.path.join(os.fspath(out_dir), f"synth_{seed + i:06d}")
        os.makedirs(folder, exist_ok=True)
        save_png(os.path.join(folder, "fg.png"), fg)
        save_png(os.path.join(folder, "alpha.png"), None, alpha)
        if caption:
            atomic_write_text(os.path.join(folder, "caption.txt"), caption + "\n")
        paths.append(folder)
    return paths
