"""Porter-Duff "over" of a straight or premultiplied foreground onto an opaque background, in sRGB or linear light."""

from __future__ import annotations

import torch
from kornia.color import linear_rgb_to_rgb, rgb_to_linear_rgb

from ..common.checks import check_unit_range

# Below this alpha a premultiplied colour carries no usable straight colour (unpremultiplying would amplify noise).
ALPHA_EPS = 1e-6


def srgb_to_linear(image: torch.Tensor) -> torch.Tensor:
    """image: [B,3,H,W] sRGB-encoded in [0,1] -> [B,3,H,W] linear light in [0,1] (IEC 61966-2-1 curve)."""
    return rgb_to_linear_rgb(image.clamp(0, 1))


def linear_to_srgb(image: torch.Tensor) -> torch.Tensor:
    """image: [B,3,H,W] linear light in [0,1] -> [B,3,H,W] sRGB-encoded in [0,1]."""
    return linear_rgb_to_rgb(image.clamp(0, 1)).clamp(0, 1)


def unpremultiply(fg_premul: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """fg_premul: [B,3,H,W] (colour x alpha), alpha: [B,1,H,W] in [0,1] -> straight [B,3,H,W] in [0,1] (0 where alpha=0)."""
    safe = alpha.clamp_min(ALPHA_EPS)
    return torch.where(alpha > ALPHA_EPS, fg_premul / safe, torch.zeros_like(fg_premul)).clamp(0, 1)


def broadcast_batch(named: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """Expand tensors whose batch is 1 to the common batch size. Rule: all batches equal, or 1.

    Returns ``(batch, {name: tensor})``; raises ``ValueError`` naming the tensors when two batches differ and
    neither is 1 (e.g. 3 objects over 5 frames is ambiguous).
    """
    sizes = {name: int(t.shape[0]) for name, t in named.items()}
    batch = max(sizes.values())
    bad = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if bad:
        listing = ", ".join(f"{name} has {n}" for name, n in sizes.items())
        raise ValueError(
            f"batch sizes do not match ({listing}): each input must have the same batch size or a batch of 1 "
            "(a single object over many frames, or many objects over one background)"
        )
    return batch, {name: t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t for name, t in named.items()}


def _check(name: str, t: torch.Tensor, channels: int) -> None:
    """``ValueError`` naming ``name`` unless ``t`` is a non-empty, finite [B,channels,H,W] tensor."""
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[1] != channels:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name}: expected a [B,{channels},H,W] tensor, got {shape}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty (shape {tuple(t.shape)}); expected at least one image of at least 1x1 px")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: holds {bad} NaN or infinite value(s); expected finite values in [0, 1]")
    check_unit_range(name, t)  # a few per cent of resampling overshoot is clipped later; more is a wrong input


def alpha_over(fg: torch.Tensor, alpha: torch.Tensor, background: torch.Tensor, premultiplied: bool = False,
               linear_light: bool = False) -> torch.Tensor:
    """fg [B,3,H,W], alpha [B,1,H,W] (1 = opaque), background [B,3,H,W], all in [0,1] -> composite [B,3,H,W] in [0,1].

    ``out = a*F + (1-a)*B`` for straight ``fg``; ``out = F + (1-a)*B`` when ``premultiplied`` (``fg`` already holds
    ``a*F``). With ``linear_light`` the sum is taken on linear-light values (sRGB decoded, composited, re-encoded),
    which is what light does physically and avoids dark fringes on soft edges. Batches broadcast (equal or 1);
    sizes must match (see :func:`compositing.composite` for placement of a smaller object).
    """
    _check("fg", fg, 3)
    _check("alpha", alpha, 1)
    _check("background", background, 3)
    if fg.shape[-2:] != alpha.shape[-2:] or fg.shape[-2:] != background.shape[-2:]:
        raise ValueError(
            f"fg {tuple(fg.shape[-2:])}, alpha {tuple(alpha.shape[-2:])} and background {tuple(background.shape[-2:])}: "
            "height and width must match (use composite() to place and scale an object on a larger background)"
        )
    dtype = torch.promote_types(fg.dtype, torch.float32)
    _, t = broadcast_batch({"fg": fg.to(dtype), "alpha": alpha.to(dtype), "background": background.to(fg.device, dtype)})
    fg, a, bg = t["fg"], t["alpha"].clamp(0, 1), t["background"].clamp(0, 1)
    if not linear_light:
        fg_premul = fg.clamp(0, 1) if premultiplied else fg.clamp(0, 1) * a
        # A premultiplied colour cannot exceed its alpha; clamp so bad input cannot push the sum above 1.
        fg_premul = torch.minimum(fg_premul, a.expand_as(fg_premul))
        return (fg_premul + (1 - a) * bg).clamp(0, 1)
    straight = unpremultiply(fg, a) if premultiplied else fg.clamp(0, 1)
    out = a * srgb_to_linear(straight) + (1 - a) * srgb_to_linear(bg)
    return linear_to_srgb(out)
