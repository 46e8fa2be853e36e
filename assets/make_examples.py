#!/usr/bin/env python
"""Make the example inputs of the shipped workflows (no third-party pictures):

    python assets/make_examples.py     # writes assets/examples/{background.png, control.png, background.mp4,
                                       #                         object_rgba.png}

The pack copies them, with ``assets/demo_greenscreen.png``, into ComfyUI's input folder on start when they are
missing there (``EXAMPLE_INPUTS`` in the pack's ``__init__.py``), so the templates' LoadImage / LoadVideo nodes
find them on a fresh install. Deterministic; numpy, OpenCV (PNG) and PyAV (MP4) only.
"""

from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "examples")


def background(width: int = 768, height: int = 512, seed: int = 3) -> np.ndarray:
    """A simple outdoor scene: sky gradient, sun glow, two hill layers, a ground plane -> HxWx3 float32 in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xx / width, yy / height
    sky = np.stack([0.45 + 0.35 * v, 0.62 + 0.25 * v, 0.92 - 0.1 * v], -1)
    sun = np.exp(-((u - 0.78) ** 2 + (v - 0.22) ** 2) / 0.01)[..., None]
    img = np.clip(sky + 0.35 * sun * np.array([1.0, 0.85, 0.55]), 0, 1)
    for base, amp, freq, colour in ((0.52, 0.06, 5.0, (0.35, 0.5, 0.42)), (0.62, 0.05, 9.0, (0.28, 0.45, 0.25))):
        phase = rng.uniform(0, 2 * np.pi)
        ridge = base + amp * np.sin(freq * u * np.pi + phase) + 0.02 * np.sin(23 * u + phase)
        mask = np.clip((v - ridge) * height / 1.5, 0, 1)[..., None]
        img = img * (1 - mask) + np.array(colour, np.float32) * (0.85 + 0.15 * (1 - v[..., None])) * mask
    ground = np.clip((v - 0.78) * height / 2, 0, 1)[..., None]
    img = img * (1 - ground) + np.array([0.55, 0.5, 0.42], np.float32) * (0.8 + 0.2 * v[..., None]) * ground
    return np.clip(img, 0, 1).astype(np.float32)


def control(size: int = 512) -> np.ndarray:
    """A teapot silhouette in dark grey on white (a ControlNet Canny reference) -> HxWx3 float32 in [0,1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    body = ((xx - 0.5) / 0.27) ** 2 + ((yy - 0.6) / 0.2) ** 2 < 1
    knob = (np.abs(xx - 0.5) < 0.025) & (np.abs(yy - 0.33) < 0.03)
    lid = (((xx - 0.5) / 0.12) ** 2 + ((yy - 0.39) / 0.05) ** 2 < 1) | knob
    handle = np.abs(np.hypot((xx - 0.77) / 0.11, (yy - 0.58) / 0.14) - 1) < 0.18
    t = np.clip((xx - 0.2) / -0.14, 0, 1)
    spout = (xx < 0.26) & (xx > 0.08) & (np.abs(yy - (0.62 - 0.22 * t)) < 0.025 + 0.02 * (1 - t))
    base = (np.abs(xx - 0.5) < 0.16) & (np.abs(yy - 0.8) < 0.015)
    shape = body | lid | handle | spout | base
    img = np.where(shape, 0.25, 1.0).astype(np.float32)
    return np.repeat(img[..., None], 3, -1)


def object_rgba(size: int = 256) -> np.ndarray:
    """A transparent object for the round-trip templates: a green leaf (so 'auto' puts it on magenta) with veins, a
    soft semi-transparent glow and a thin stem -> HxWx4 float32 straight RGBA in [0,1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    u, v = xx - 0.5, yy - 0.45
    c, s = np.cos(0.6), np.sin(0.6)
    a_, b_ = c * u + s * v, -s * u + c * v  # the leaf's axes, tilted
    width = 0.2 * np.clip(1 - (a_ / 0.36) ** 2, 0, 1) ** 0.8
    edge = (width - np.abs(b_)) * size  # px inside the leaf outline
    body = np.clip(edge / 1.5 + 0.5, 0, 1)
    glow = 0.35 * np.exp(-np.clip(-edge, 0, None) / 6.0) * (edge < 0)  # a translucent halo around the outline
    glow *= np.clip(1 - (a_ / 0.4) ** 2, 0, 1)  # ... that fades out beyond the tip and the base
    stem = np.clip((0.012 - np.abs(b_)) * size / 1.5 + 0.5, 0, 1) * ((a_ > 0.3) & (a_ < 0.46))
    alpha = np.clip(np.maximum(np.maximum(body, glow), stem), 0, 1)
    vein = np.exp(-(b_ * size / 2.0) ** 2) + 0.6 * np.exp(-((np.abs(b_) - 0.35 * (a_ + 0.36)) % 0.06 * size / 1.5) ** 2)
    shade = 0.75 + 0.25 * (1 - a_ / 0.36)
    rgb = np.stack([0.18 + 0.25 * vein, 0.55 * shade + 0.2 * vein, 0.12 + 0.05 * vein], -1)
    rgb = np.where((stem > body)[..., None], np.array([0.35, 0.28, 0.15], np.float32), rgb)
    rgb = np.where((glow > body)[..., None], np.array([0.75, 0.95, 0.55], np.float32), rgb)
    return np.clip(np.concatenate([rgb, alpha[..., None]], -1), 0, 1).astype(np.float32)


def write_video(path: str, frames: list[np.ndarray], fps: int = 8) -> None:
    import av

    h, w = frames[0].shape[:2]
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 400_000
        for frame in frames:
            rgb = np.ascontiguousarray(np.round(frame * 255).astype(np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    import cv2

    os.makedirs(OUT, exist_ok=True)
    bg = background()
    cv2.imwrite(os.path.join(OUT, "background.png"), np.round(bg[..., ::-1] * 255).astype(np.uint8))
    cv2.imwrite(os.path.join(OUT, "control.png"), np.round(control()[..., ::-1] * 255).astype(np.uint8))
    # 16 frames (2 s at 8 fps) of a slow pan across a wider copy of the scene, 320x240
    wide = cv2.resize(background(960, 480, seed=5), (480, 240), interpolation=cv2.INTER_AREA)
    frames = [wide[:, 10 * i: 10 * i + 320] for i in range(16)]
    write_video(os.path.join(OUT, "background.mp4"), frames)
    rgba = np.round(object_rgba() * 255).astype(np.uint8)
    cv2.imwrite(os.path.join(OUT, "object_rgba.png"), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    print(f"wrote {OUT}/background.png, control.png, background.mp4, object_rgba.png")


if __name__ == "__main__":
    main()
