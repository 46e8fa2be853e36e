"""Make the README pictures (no external data): a procedural object with hair-like strands on a green canvas,
keyed by GreenPost and shown on a checkerboard, and composited onto a procedural background.

    .venv/bin/python docs/images/make_pictures.py
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main() -> int:
    import torch

    from diffumatting.common.images import save_png
    from diffumatting.compositing import alpha_over, checkerboard, composite
    from diffumatting.greenpost import green_post
    from diffumatting.synthetic import synthetic_matte

    size = 256
    fg, alpha = synthetic_matte(size, seed=7)
    fg, alpha = fg[None], alpha[None]
    key = torch.tensor([0.0, 177 / 255, 64 / 255]).reshape(1, 3, 1, 1)
    green = alpha_over(fg, alpha, key.expand(1, 3, size, size))
    res = green_post(green)
    board = checkerboard(size, size, square=16)
    keyed = alpha_over(res.fg, res.alpha, board)
    gap = torch.ones(1, 3, size, 8)
    save_png(os.path.join(HERE, "keying_demo.png"), torch.cat([green, gap, keyed], dim=-1)[0])
    mse = float(((res.alpha - alpha) ** 2).mean())

    # a procedural "scene": sky gradient, warm horizon, a darker floor
    h, w = 256, 384
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    sky = torch.stack([0.35 + 0.4 * ys, 0.55 + 0.25 * ys, 0.85 - 0.2 * ys])
    floor = torch.stack([0.35 - 0.1 * ys + 0.05 * xs, 0.28 - 0.05 * ys, 0.22 - 0.05 * ys])
    bg = torch.where(ys[None] > 0.7, floor, sky)[None]
    bg = bg + 0.04 * torch.sin(xs * 40)[None, None] * (ys[None, None] > 0.7)
    frames = torch.cat([bg, bg.flip(-1)], 0)  # two "frames": one object broadcast over both
    comp, _ = composite(res.fg, res.alpha, frames, x=0.5, y=0.92, scale=0.85, anchor="bottom", linear_light=True,
                        light_wrap_strength=0.3, light_wrap_radius=6)
    save_png(os.path.join(HERE, "composite_demo.png"), torch.cat([comp[0], torch.ones(3, h, 8), comp[1]], dim=-1))
    print(f"keying_demo.png: alpha MSE vs the synthetic ground truth {mse:.2e}; composite_demo.png written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
