"""The DiffuMatting training objective (see ``../shared/docs/method.md``, Training losses), pure torch.

Notation: ``eps`` the noise added to the clean latent, ``eps_hat`` the UNet's prediction of it, ``x0_hat`` the
implied clean latent, ``bg`` the background mask at latent size (1 where the 8x8 patch holds no foreground),
``band`` the transition band at latent size, ``abar`` the cumulative signal level of each sample's timestep
(``1 / (1 + sigma^2)`` for the variance-preserving schedules of SD1.x/SDXL).

Masked losses are means over the masked elements (channels included); an all-zero mask contributes 0 (never
NaN) while keeping the graph connected, so a batch without background or without transition pixels still
back-propagates the other terms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "diffusion_loss",
    "attention_green_loss",
    "canvas_green_loss",
    "transition_boundary_loss",
    "joint_loss",
    "background_mask",
    "transition_band",
    "abar_from_sigma",
]

_EPS = 1e-8


def _check_same(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names}: expected equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_mask(mask: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != ref.shape[0] or mask.shape[2:] != ref.shape[2:]:
        raise ValueError(
            f"{name}: expected [B,1,h,w] = [{ref.shape[0]},1,{ref.shape[2]},{ref.shape[3]}], got {tuple(mask.shape)}"
        )


def _masked_mean(sq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sq: [B,C,h,w] >= 0, mask: [B,1,h,w] in [0,1] -> scalar: sum(mask*sq) / (C*sum(mask)); 0 for an empty mask."""
    mask = mask.to(sq.dtype)
    num = (sq * mask).sum()
    den = mask.sum() * sq.shape[1]
    return torch.where(den > _EPS, num / den.clamp_min(_EPS), num * 0.0)


def diffusion_loss(eps: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """eps, eps_hat: [B,C,h,w] -> L_ldm: scalar float32 >= 0, ``mean((eps - eps_hat)^2)``."""
    _check_same(eps, eps_hat, "eps/eps_hat")
    return (eps.float() - eps_hat.float()).pow(2).mean()


def attention_green_loss(
    a_g: torch.Tensor, bg: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """a_g: [B,1,h,w] in [0,1], bg: [B,1,h,w] in {0,1}, valid: [B] bool | None -> L_attn: scalar >= 0.

    ``mean((A_g - B)^2)`` over the samples marked ``valid`` (those whose caption holds the key-colour word; an
    empty caption has no green token to supervise); 0 when none is valid.
    """
    _check_mask(bg, a_g, "bg")
    if a_g.shape[1] != 1:
        raise ValueError(f"a_g: expected [B,1,h,w], got {tuple(a_g.shape)}")
    per = (a_g.float() - bg.float()).pow(2).flatten(1).mean(1)  # [B]
    if valid is None:
        return per.mean()
    valid = torch.as_tensor(valid, device=per.device).flatten().to(per.dtype)
    if valid.numel() != per.numel():
        raise ValueError(f"valid: expected {per.numel()} flags (one per sample), got {valid.numel()}")
    n = valid.sum()
    return torch.where(n > 0, (per * valid).sum() / n.clamp_min(1.0), per.sum() * 0.0)


def canvas_green_loss(
    x0_hat: torch.Tensor, z_green: torch.Tensor, bg: torch.Tensor, abar: torch.Tensor
) -> torch.Tensor:
    """x0_hat: [B,C,h,w], z_green: broadcastable to it, bg: [B,1,h,w] in [0,1], abar: [B] in (0,1] -> L_canvas.

    ``sum(B * abar_t * (x0_hat - z_green)^2) / (C * sum(B))``: the predicted clean latent is pulled to the
    key-colour latent on the background, weighted by the signal level (at high noise x0_hat is a blur and is
    trusted less). Scalar float32 >= 0; 0 when no pixel is background.
    """
    _check_mask(bg, x0_hat, "bg")
    try:
        diff = x0_hat.float() - z_green.to(x0_hat.device).float()
    except RuntimeError:
        raise ValueError(
            f"z_green: expected a shape broadcastable to {tuple(x0_hat.shape)}, got {tuple(z_green.shape)}"
        ) from None
    if diff.shape != x0_hat.shape:
        raise ValueError(f"z_green: expected a shape broadcastable to {tuple(x0_hat.shape)}, got {tuple(z_green.shape)}")
    abar = torch.as_tensor(abar, device=x0_hat.device).float().flatten()
    if abar.numel() == 1:
        abar = abar.expand(x0_hat.shape[0])
    if abar.numel() != x0_hat.shape[0]:
        raise ValueError(f"abar: expected {x0_hat.shape[0]} values (one per sample), got {abar.numel()}")
    return _masked_mean(diff.pow(2) * abar.view(-1, 1, 1, 1), bg.float())


def transition_boundary_loss(eps: torch.Tensor, eps_hat: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """eps, eps_hat: [B,C,h,w], band: [B,1,h,w] in [0,1] -> L_tb: scalar >= 0, ``sum(U (eps-eps_hat)^2) / (C sum U)``."""
    _check_same(eps, eps_hat, "eps/eps_hat")
    _check_mask(band, eps, "band")
    return _masked_mean((eps.float() - eps_hat.float()).pow(2), band.float())


@dataclass
class LossWeights:
    """Weights of the joint objective ``L = L_ldm + green * (attn * L_attn + canvas * L_canvas) + tb * L_tb``."""

    green: float = 0.5
    attn: float = 1.0
    canvas: float = 1.0
    tb: float = 1.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0 or v == float("inf"):
                raise ValueError(f"loss weight {k}: expected a finite number >= 0, got {v!r}")


def joint_loss(
    eps: torch.Tensor,
    eps_hat: torch.Tensor,
    x0_hat: torch.Tensor,
    z_green: torch.Tensor,
    bg: torch.Tensor,
    band: torch.Tensor,
    abar: torch.Tensor,
    a_g: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """All [B,C,h,w] / [B,1,h,w] as above (``a_g`` None: no attention term) -> dict of scalars.

    Keys: ``loss`` (the weighted sum to back-propagate), ``ldm``, ``attn``, ``canvas``, ``green``
    (``attn * L_attn + canvas * L_canvas``), ``tb``. Terms whose weight is 0 are still reported but not computed
    into the graph twice.
    """
    w = weights or LossWeights()
    ldm = diffusion_loss(eps, eps_hat)
    zero = ldm * 0.0
    attn = attention_green_loss(a_g, bg, valid) if a_g is not None else zero
    canvas = canvas_green_loss(x0_hat, z_green, bg, abar)
    tb = transition_boundary_loss(eps, eps_hat, band)
    green = w.attn * attn + w.canvas * canvas
    loss = ldm + w.green * green + w.tb * tb
    return {"loss": loss, "ldm": ldm, "attn": attn, "canvas": canvas, "green": green, "tb": tb}


def abar_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """sigma: [B] >= 0 (k-diffusion parameterisation of a VP schedule) -> abar: [B] in (0,1], ``1/(1+sigma^2)``."""
    return 1.0 / (1.0 + sigma.float().pow(2))


def _check_alpha(alpha: torch.Tensor, factor: int) -> None:
    if alpha.ndim != 4 or alpha.shape[1] != 1:
        raise ValueError(f"alpha: expected [B,1,H,W], got {tuple(alpha.shape)}")
    if alpha.shape[2] % factor or alpha.shape[3] % factor:
        raise ValueError(f"alpha: expected H and W divisible by the latent factor {factor}, got {tuple(alpha.shape[2:])}")


def background_mask(alpha: torch.Tensor, factor: int = 8, threshold: float = 0.01) -> torch.Tensor:
    """alpha: [B,1,H,W] in [0,1] (H, W multiples of ``factor``) -> bg: [B,1,H/f,W/f] float in {0,1}.

    ``1 - maxpool_f(alpha > threshold)``: 1 where the whole ``f x f`` patch is free of foreground.
    """
    _check_alpha(alpha, factor)
    fgm = (alpha > threshold).to(torch.float32)
    return 1.0 - F.max_pool2d(fgm, factor, factor)


def transition_band(alpha: torch.Tensor, radius: int = 10, factor: int = 8, tol: float = 1.0 / 255.0) -> torch.Tensor:
    """alpha: [B,1,H,W] in [0,1] -> band: [B,1,H/f,W/f] in {0,1}, the dilated transition region at latent size.

    ``U = maxpool_f(dilate(tol < alpha < 1 - tol  or  edge of (alpha > 0.5), radius))``; the dilation is a
    ``(2r+1)`` square (max-pool), ``radius`` in pixels (about 10 at 512 px; scale it with the resolution).
    """
    _check_alpha(alpha, factor)
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius: expected an int >= 0 (pixels), got {radius!r}")
    a = alpha.float()
    partial = (a > tol) & (a < 1.0 - tol)
    hard = (a > 0.5).float()
    dil = F.max_pool2d(hard, 3, 1, 1)
    ero = -F.max_pool2d(-hard, 3, 1, 1)
    edge = (dil - ero) > 0
    u = (partial | edge).float()
    if radius > 0:
        u = F.max_pool2d(u, 2 * radius + 1, 1, radius)
    return F.max_pool2d(u, factor, factor)
