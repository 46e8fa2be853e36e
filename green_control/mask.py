"""Background mask from recorded green-token attention maps, with a soft threshold and an optional x0 prior."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["aggregate_attention", "soft_threshold", "x0_prior", "background_mask", "normalize_per_image"]

_EPS = 1e-6


def _check_hw(value, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a (height, width) pair, got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: expected positive (height, width), got {value!r}")
    return h, w


def normalize_per_image(x: torch.Tensor) -> torch.Tensor:
    """x: [B,C,H,W] -> [B,C,H,W] in [0,1], min-max over each image; a constant image maps to 0 (never NaN)."""
    flat = x.flatten(1)
    lo = flat.amin(1).view(-1, *([1] * (x.ndim - 1)))
    hi = flat.amax(1).view(-1, *([1] * (x.ndim - 1)))
    span = hi - lo
    return torch.where(span > _EPS, (x - lo) / span.clamp_min(_EPS), torch.zeros_like(x))


def aggregate_attention(
    maps: Sequence[tuple[torch.Tensor, tuple[int, int]]],
    out_hw: tuple[int, int],
    *,
    normalize: bool = True,
) -> torch.Tensor:
    """maps: list of ([B,heads,h_i*w_i,T], (h_i, w_i)), out_hw: (h, w) -> A_g: [B,1,h,w] float32 in [0,1].

    Heads and tokens are averaged per block, each block is upsampled (bilinear) to ``out_hw``, blocks are
    averaged, and the result is min-max normalised per image (``normalize=False`` keeps the raw probability
    mean, in [0,1] too). Differentiable. Blocks of different head counts or token counts may be mixed.
    """
    out_hw = _check_hw(out_hw, "out_hw")
    if len(maps) == 0:
        raise ValueError("maps: expected at least one recorded attention map, got none")
    total = None
    batch = None
    for i, item in enumerate(maps):
        try:
            probs, hw = item
        except (TypeError, ValueError):
            raise ValueError(f"maps[{i}]: expected a (probs [B,heads,HW,T], (h, w)) pair") from None
        h, w = _check_hw(hw, f"maps[{i}] size")
        if probs.ndim != 4 or probs.shape[2] != h * w:
            raise ValueError(f"maps[{i}]: expected [B,heads,{h}*{w},T], got {tuple(probs.shape)}")
        if batch is None:
            batch = probs.shape[0]
        elif probs.shape[0] != batch:
            raise ValueError(f"maps[{i}]: batch {probs.shape[0]} differs from the first map's batch {batch}")
        a = probs.float().mean(dim=(1, 3)).reshape(batch, 1, h, w)
        if (h, w) != out_hw:
            a = F.interpolate(a, size=out_hw, mode="bilinear", align_corners=False)
        total = a if total is None else total + a
    mean = total / len(maps)
    return normalize_per_image(mean) if normalize else mean.clamp(0.0, 1.0)


def soft_threshold(a_g: torch.Tensor, tau: float = 0.35, width: float = 0.2) -> torch.Tensor:
    """a_g: [B,1,h,w] in [0,1] -> M: [B,1,h,w] in [0,1], ``clamp((a_g - tau) / width, 0, 1)`` (1 = background)."""
    if width <= 0:
        raise ValueError(f"width: expected a positive ramp width, got {width}")
    return ((a_g - tau) / width).clamp(0.0, 1.0)


def x0_prior(x0: torch.Tensor, z_green: torch.Tensor, scale: float) -> torch.Tensor:
    """x0: [B,C,h,w], z_green: [B|1,C,h|1,w|1] (same space) -> prior: [B,1,h,w] in (0,1], ``exp(-||x0-z||^2/s^2)``.

    The squared distance is summed over channels; ``scale`` is the distance at which the prior falls to 1/e.
    """
    if scale <= 0:
        raise ValueError(f"scale: expected a positive distance scale, got {scale}")
    d2 = (x0.float() - z_green.float()).pow(2).sum(1, keepdim=True)
    return torch.exp(-d2 / (scale * scale))


def background_mask(
    a_g: torch.Tensor,
    tau: float = 0.35,
    width: float = 0.2,
    *,
    x0: torch.Tensor | None = None,
    z_green: torch.Tensor | None = None,
    prior_scale: float | None = None,
) -> torch.Tensor:
    """a_g: [B,1,h,w] in [0,1] (+ optional x0/z_green [B,C,h,w]) -> M: [B,1,h,w] float32 in [0,1] (1 = background).

    ``M = soft_threshold(a_g)``, multiplied by :func:`x0_prior` when ``prior_scale`` is given (then ``x0`` and
    ``z_green`` are required). ``a_g`` is resized (bilinear) to ``x0``'s size if they differ.
    """
    m = soft_threshold(a_g.float(), tau, width)
    if prior_scale is not None:
        if x0 is None or z_green is None:
            raise ValueError("x0/z_green: both are required when prior_scale is given")
        if m.shape[-2:] != x0.shape[-2:]:
            m = F.interpolate(m, size=x0.shape[-2:], mode="bilinear", align_corners=False)
        m = m * x0_prior(x0, z_green, prior_scale)
    return m
