#!/usr/bin/env python
"""Make the bundled demo image: a procedural object on a green screen (no third-party pictures).

    python assets/make_demo.py            # writes assets/demo_greenscreen.png (and demo_alpha.png, the true matte)

The picture: an orange ball with a dark rim, a tuft of thin hair-like strands, a semi-transparent blue glass
disc and a soft shadow-free edge, on a chroma green with a gentle lighting gradient and a little green spill and
sensor noise. Deterministic (fixed seed). Only numpy is needed to build it; OpenCV writes the PNGs.
"""

from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO_IMAGE = os.path.join(HERE, "demo_greenscreen.png")
DEMO_ALPHA = os.path.join(HERE, "demo_alpha.png")


def make_demo(width: int = 640, height: int = 480, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """-> (image HxWx3 float32 in [0,1] sRGB, true alpha HxW float32 in [0,1])."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ss = 4  # supersampled strands for antialiased thin structure
    fg = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)

    def over(colour, a):
        nonlocal fg, alpha
        a = np.clip(a, 0, 1)[..., None]
        fg = colour * a + fg * (1 - a)
        alpha = a[..., 0] + alpha * (1 - a[..., 0])

    # a ball: orange with shading and a dark rim, antialiased edge
    cx, cy, r = 0.42 * width, 0.58 * height, 0.24 * height
    d = np.hypot(xx - cx, yy - cy)
    shade = np.clip(1.1 - 0.6 * np.hypot(xx - cx + 0.3 * r, yy - cy + 0.4 * r) / r, 0.35, 1.1)[..., None]
    ball = np.array([0.95, 0.45, 0.12], np.float32) * shade
    ball = np.where((d > 0.9 * r)[..., None], ball * 0.35, ball)
    over(np.clip(ball, 0, 1), r - d + 0.5)
    # hair-like strands from the top of the ball (thin, partly sub-pixel)
    hs, ws = height * ss, width * ss
    strands = np.zeros((hs, ws), np.float32)
    for _ in range(60):
        t = np.linspace(0, 1, 400)
        ang = rng.uniform(-2.4, -0.7)
        length = rng.uniform(0.6, 1.3) * r
        curl = rng.uniform(-0.6, 0.6)
        x0 = cx + r * 0.9 * np.cos(ang)
        y0 = cy + r * 0.9 * np.sin(ang)
        px = (x0 + t * length * np.cos(ang + curl * t)) * ss
        py = (y0 + t * length * np.sin(ang + curl * t)) * ss
        ok = (px >= 0) & (px < ws) & (py >= 0) & (py < hs)
        width_px = rng.uniform(1.0, 3.0)  # in supersampled pixels -> 0.25 to 0.75 px
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                w = max(0.0, 1 - np.hypot(dx, dy) / width_px)
                xi = np.clip(px[ok].astype(int) + dx, 0, ws - 1)
                yi = np.clip(py[ok].astype(int) + dy, 0, hs - 1)
                strands[yi, xi] = np.maximum(strands[yi, xi], w)
    strand_a = strands.reshape(height, ss, width, ss).mean(axis=(1, 3))
    over(np.array([0.35, 0.22, 0.12], np.float32), strand_a * 1.6)
    # a semi-transparent blue glass disc (alpha 0.45) with an opaque rim
    gx, gy, gr = 0.75 * width, 0.38 * height, 0.14 * height
    gd = np.hypot(xx - gx, yy - gy)
    glass = np.clip(gr - gd + 0.5, 0, 1) * 0.45
    glass = np.maximum(glass, np.clip(1.5 - np.abs(gd - gr), 0, 1))
    over(np.array([0.25, 0.4, 0.9], np.float32), glass)

    # the screen: chroma green with a lighting gradient
    green = np.array([0.10, 0.70, 0.27], np.float32)
    light = (1.0 + 0.12 * (xx / width - 0.5) - 0.08 * (yy / height - 0.5))[..., None]
    plate = np.clip(green * light, 0, 1)
    # a little green spill on the object near its edges (box-blurred canvas coverage, separable)
    cover = 1 - alpha
    k = 15
    kernel = np.ones(k, np.float32) / k
    for axis in (0, 1):
        cover = np.apply_along_axis(lambda v: np.convolve(np.pad(v, k // 2, mode="edge"), kernel, "valid"), axis, cover)
    lit = np.clip(fg + 0.2 * cover[..., None] * (0.3 + 0.7 * fg) * plate, 0, 1)
    img = alpha[..., None] * lit + (1 - alpha[..., None]) * plate
    img = img + rng.normal(0, 0.004, img.shape).astype(np.float32)
    img = np.round(np.clip(img, 0, 1) * 255) / 255
    return img.astype(np.float32), alpha.astype(np.float32)


def main() -> None:
    import cv2

    img, alpha = make_demo()
    cv2.imwrite(DEMO_IMAGE, np.round(img[..., ::-1] * 255).astype(np.uint8))
    cv2.imwrite(DEMO_ALPHA, np.round(alpha * 255).astype(np.uint8))
    print(f"wrote {DEMO_IMAGE} and {DEMO_ALPHA}")


if __name__ == "__main__":
    main()
