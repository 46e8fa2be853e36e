#!/usr/bin/env python
"""Make the example inputs of the shipped workflows (no third-party pictures):

    python assets/make_examples.py     # writes assets/examples/{background.png, control.png, background.mp4}

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
    print(f"wrote {OUT}/background.png, control.png, background.mp4")


if __name__ == "__main__":
    main()
