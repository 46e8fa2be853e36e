"""x0 anchoring towards the key-colour latent, its strength schedule over sigma, and the key-colour latent."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..common.keycolour import KeyColour

__all__ = ["schedule_progress", "strength_schedule", "anchor_x0", "flat_key_image", "key_latent"]


def schedule_progress(sigma: torch.Tensor, sample_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma: [B] (or scalar), sample_sigmas: [N+1] decreasing -> progress: [B] float32 in [0,1] (0 = first step).

    The fractional step index of ``sigma`` in the run's schedule (log-sigma interpolation between steps, so the
    extra evaluations of second-order samplers land between their neighbours), divided by the ``N`` steps.
    """
    s = sample_sigmas.detach().flatten().float().cpu()
    sig = sigma.detach().flatten().float().cpu()
    if s.numel() < 2:
        return torch.zeros_like(sig)
    n = s.numel() - 1
    # log space, with the final sigma (often 0) floored so the last interval is usable
    floor = torch.finfo(torch.float32).tiny
    ls = torch.log(s.clamp_min(floor))
    lx = torch.log(sig.clamp_min(floor))
    out = torch.empty_like(sig)
    for j, v in enumerate(lx):
        if v >= ls[0]:
            out[j] = 0.0
            continue
        if v <= ls[-1]:
            out[j] = 1.0
            continue
        # first index i with ls[i] < v (ls decreasing); v lies in (ls[i], ls[i-1]]
        i = int(torch.nonzero(ls < v)[0])
        hi, lo = ls[i - 1], ls[i]
        frac = float((hi - v) / (hi - lo)) if hi > lo else 0.0
        out[j] = (i - 1 + frac) / n
    return out


def strength_schedule(
    sigma: torch.Tensor, sample_sigmas: torch.Tensor | None, strength: float, end: float
) -> torch.Tensor:
    """sigma: [B], sample_sigmas: [N+1] | None -> w: [B] float32, ``strength`` while progress < ``end``, else 0.

    ``end`` is the fraction of the schedule that is anchored (0.7 = the first 70 % of the steps); ``end >= 1``
    anchors every step, ``end <= 0`` none. Without a schedule (``None``) every evaluation gets ``strength``.
    """
    if not 0.0 <= strength:
        raise ValueError(f"strength: expected a non-negative number, got {strength}")
    sig = sigma.detach().flatten().float().cpu()
    if sample_sigmas is None or end >= 1.0:
        on = torch.ones_like(sig, dtype=torch.bool) if end > 0 else torch.zeros_like(sig, dtype=torch.bool)
    else:
        on = schedule_progress(sig, sample_sigmas) < end - 1e-6
    return on.float() * float(strength)


def anchor_x0(x0: torch.Tensor, z_green: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """x0: [B,C,h,w], z_green: [1|B,C,1|h,1|w], mask: [B,1,h,w] in [0,1], weight: [B] or float -> x0': [B,C,h,w].

    ``x0' = x0 + clamp(w * M, 0, 1) * (z_green - x0)`` computed with ``torch.lerp`` so that a blend factor of 0
    returns ``x0`` and a factor of 1 returns ``z_green`` exactly. Same dtype/device as ``x0``.
    """
    if x0.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"x0/mask: expected [B,C,h,w] and [B,1,h,w], got {tuple(x0.shape)} and {tuple(mask.shape)}")
    if mask.shape[0] not in (1, x0.shape[0]) or mask.shape[-2:] != x0.shape[-2:]:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not fit x0 {tuple(x0.shape)}")
    if z_green.ndim != 4 or z_green.shape[1] != x0.shape[1]:
        raise ValueError(f"z_green: expected [1|B,{x0.shape[1]},1|h,1|w], got {tuple(z_green.shape)}")
    w = torch.as_tensor(weight, dtype=torch.float32, device=x0.device).flatten()
    if w.numel() not in (1, x0.shape[0]):
        raise ValueError(f"weight: expected a number or [B={x0.shape[0]}] values, got {w.numel()}")
    factor = (w.view(-1, 1, 1, 1) * mask.to(device=x0.device, dtype=torch.float32)).clamp(0.0, 1.0)
    target = z_green.to(device=x0.device, dtype=x0.dtype).expand_as(x0)
    return torch.lerp(x0, target, factor.to(x0.dtype).expand_as(x0))


def _key_rgb(key) -> torch.Tensor:
    rgb = key.tensor() if isinstance(key, KeyColour) else torch.as_tensor(key, dtype=torch.float32).detach().flatten()
    rgb = rgb.float().cpu()
    if rgb.numel() != 3 or not torch.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1:
        raise ValueError(f"key: expected a KeyColour or three values in [0,1], got {rgb.tolist()}")
    return rgb


def flat_key_image(key, size: int = 64, batch: int = 1) -> torch.Tensor:
    """key: KeyColour or [3] float in [0,1] -> a flat key-colour image [batch,3,size,size] float32 in [0,1] (cpu)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size: expected a positive number of pixels, got {size!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive batch size, got {batch!r}")
    return _key_rgb(key).view(1, 3, 1, 1).expand(batch, 3, size, size).contiguous()


def key_latent(encode: Callable[[torch.Tensor], torch.Tensor], key, size: int = 64, border: int = 2) -> torch.Tensor:
    """encode: image [1,3,H,W] in [0,1] -> latent [1,C,h,w]; key: KeyColour or [3] in [0,1] -> z: [1,C,1,1] float32.

    The one key latent ``z_key``: encodes :func:`flat_key_image` (``size`` px) and averages each channel over the
    latent's interior (``border`` latent pixels dropped: padding disturbs the edges). ``encode`` decides the space:
    ``vae.encode`` gives VAE space, followed by ``latent_format.process_in`` model space (both per-channel affine,
    so averaging first is the same). Raises ``ValueError`` if the encoder returns a non-finite latent (e.g. an
    untrained VAE), naming the cause, instead of letting NaN reach the sampler.
    """
    z = encode(flat_key_image(key, size))
    if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[0] != 1:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"encode: expected a latent [1,C,h,w], got {shape}")
    h, w = z.shape[-2:]
    if h > 2 * border + 1 and w > 2 * border + 1:
        z = z[..., border : h - border, border : w - border]
    z = z.float().mean(dim=(2, 3), keepdim=True)
    if not torch.isfinite(z).all():
        raise ValueError(
            "vae: encoding the flat key-colour image gave a non-finite latent (NaN/inf); the VAE's weights are "
            "probably untrained or broken. Use the checkpoint's trained VAE."
        )
    return z
