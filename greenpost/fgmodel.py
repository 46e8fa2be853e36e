"""Stage 3, the local foreground-colour model: where nearby opaque pixels give the local foreground colour F and a
pixel lies on the line between the screen K and F, alpha is the exact projection onto that line (and a scalar
model lowers over-opaque pixels whose colour only roughly points at F). Batch-wide: the pixels of every image are
gathered in one index (one host sync per batch), so the cost follows the transition region, not the image."""

from __future__ import annotations

import torch

from ..common.keycolour import key_difference
from .alpha import ratio_to_alpha
from .band import downsample, morph, pixels, pool_factor, upsample
from .screen import cell_grid


def _key_difference_at(x: torch.Tensor, high: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
    """x [3,N] colours of pixels of images ``bi`` [N], high [B,3] bool (CPU) -> [N] key difference."""
    if high.shape[0] == 1 or bool((high == high[:1]).all()):
        return key_difference(x[None], high[:1])[0, 0]
    return key_difference(x.T, high.to(x.device)[bi])[:, 0]  # mixed key colours in one batch (rare)


def foreground_grid(img: torch.Tensor, screen_diff_grid: torch.Tensor, high: torch.Tensor, noise: torch.Tensor,
                    black: torch.Tensor, white: torch.Tensor, gamma: float, cells: int, opaque_below: float,
                    erode: int, local_min: bool, reach: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """img [B,3,H,W] in [0,1], screen_diff_grid [B,1,h,w] the screen's colour difference (clamped) on its grid,
    high [B,3] bool, noise / black / white per image -> (foreground grid [B,3,h',w'] (about ``cells`` on the long
    side: the local colour of confidently opaque pixels, push-pull filled), region [B,1,H/s,W/s] bool on the
    reduced grid where the model may apply: within ``reach`` px of opaque pixels, not opaque, near the
    colour-difference transition), s: that grid's reduction factor).

    Confidently opaque (on an area-reduced image): difference ratio below ``opaque_below``, eroded by ``erode`` px
    and, with ``local_min``, at the local minimum of the ratio (ramps into the canvas are excluded)."""
    b, _, h, w = img.shape
    so = max(1, pool_factor(h, w, cells) // 3)
    small = downsample(img, so)
    r_s = key_difference(small, high).div_(upsample(screen_diff_grid, small.shape[-2:]))
    opaque = morph((r_s < opaque_below).to(torch.uint8), -(-erode // so), "min").bool()
    if local_min:
        tol_min = (3.0 * noise).clamp(min=0.04)[:, None, None, None]
        opaque &= (r_s - morph(r_s, -(-3 // so), "min")) < tol_min
    grid = cell_grid(small, opaque.float(), pool_factor(small.shape[-2], small.shape[-1], max(1, cells)))
    reach_px = reach if reach > 0 else max(h, w)
    near_opaque = morph(opaque.to(torch.uint8), -(-reach_px // so), "max") > 0
    # the model changes alpha near the colour-difference transition (an over-opaque edge lies next to it)
    a_s = ratio_to_alpha(r_s, black, white, gamma)
    near_edge = morph(((a_s > 0) & (a_s < 1)).to(torch.uint8), -(-max(1, reach_px // 2) // so), "max") > 0
    return grid, near_opaque & ~opaque & near_edge, so


def scalar_model(a: torch.Tensor, r: torch.Tensor, ki: torch.Tensor, kf: torch.Tensor, kk: torch.Tensor,
                 kf2: torch.Tensor, trust: torch.Tensor, high: torch.Tensor, bi: torch.Tensor, black: torch.Tensor,
                 white: torch.Tensor, gamma: float, weight: float, angle: float, lo: float, hi: float) -> torch.Tensor:
    """Scalar foreground-colour model at N pixels: a [N] alpha so far, r [N] difference ratio, ki = I - K,
    kf = F_local - K, kk = K (each [3,N]), kf2 = |kf|^2 [N], trust [N] of the projection model in [0,1], high [B,3],
    bi [N] image of each pixel, black / white [N] -> alpha [N].

    The pixel is taken as a mix of the screen and a colour whose key difference is the local foreground colour's
    (alpha = linear key / linear key of F_local). It needs only the direction of I - K to agree roughly with
    F_local - K, so it reaches hair whose colour is not exactly the opaque pixels'. It only lowers alpha
    (over-opacity of non-key-coloured semi-transparent pixels is the colour-difference key's main error) and leaves
    pixels it would keep nearly opaque (above ``lo``..``hi``) alone; ``angle``: sine of the angle between I - K and
    F_local - K at which it is ignored; ``weight``: its strength where the projection is not trusted."""
    d_f = _key_difference_at(kf + kk, high, bi)
    d_s = _key_difference_at(kk, high, bi).clamp_min(0.05)
    v_f = (1.0 - d_f / d_s).clamp_min(1.0)
    a_sc = ratio_to_alpha(1.0 - (1.0 - r) / v_f, black, white, gamma)
    ki2 = (ki[0] * ki[0] + ki[1] * ki[1] + ki[2] * ki[2]).clamp_min(1e-6)
    cos = (ki[0] * kf[0] + ki[1] * kf[1] + ki[2] * kf[2]) / (ki2 * kf2.clamp_min(1e-6)).sqrt()
    sin = torch.where(cos > 0, (1 - cos.clamp(max=1) ** 2).sqrt(), torch.ones_like(cos))
    w_sc = weight * (1 - sin / angle).clamp(0, 1) * (1 - trust)
    w_sc *= ((hi - a_sc) / (hi - lo)).clamp(0, 1)
    return a + w_sc * (a_sc - a).clamp(max=0)


def apply_foreground_model(a: torch.Tensor, img: torch.Tensor, r: torch.Tensor, region: torch.Tensor, factor: int,
                           screen: torch.Tensor, fg_local: torch.Tensor, high: torch.Tensor, black: torch.Tensor,
                           white: torch.Tensor, tol: torch.Tensor, gamma: float, scalar: dict | None) -> None:
    """In place on ``a`` [B,1,H,W] (contiguous): img [B,3,H,W], r [B,1,H,W] difference ratio, region [B,1,h,w]
    bool (foreground_grid's, on its grid ``factor`` times coarser),
    screen [B,3,H,W] (or the flat key [B,3,1,1]) and fg_local [B,3,H,W] local foreground colour at full
    resolution, high [B,3] bool, black / white [B,1,1,1], tol [B] colour distance from the screen-foreground line
    at which the projection is ignored; ``scalar``: scalar_model's keyword options, or None (off)."""
    h, w = a.shape[-2:]
    if factor > 1:
        region = region.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)[..., :h, :w]
    flat = region.reshape(-1).nonzero().squeeze(1)  # one host sync for the batch
    if flat.numel() == 0:
        return
    hw = h * w
    bi, pix = flat // hw, flat % hw
    kk = pixels(screen, bi, pix) if screen.shape[-1] > 1 else screen[:, :, 0, 0][bi].T
    kf = pixels(fg_local, bi, pix) - kk
    ki = pixels(img, bi, pix) - kk
    kf2 = kf[0] * kf[0] + kf[1] * kf[1] + kf[2] * kf[2]
    t = (ki[0] * kf[0] + ki[1] * kf[1] + ki[2] * kf[2]) / kf2.clamp_min(1e-4)
    d = ki - t.clamp(0, 1) * kf
    resid = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt_()
    trust = (1.0 - resid / tol[bi]).clamp(0, 1) * (kf2 > 0.01).float()
    blk, wht = black.reshape(-1)[bi], white.reshape(-1)[bi]
    a_proj = ratio_to_alpha(1.0 - t, blk, wht, gamma)
    a_flat = a.view(-1)
    old = a_flat.index_select(0, flat)
    if scalar is not None:
        old = scalar_model(old, r.reshape(-1).index_select(0, flat), ki, kf, kk, kf2, trust, high, bi, blk, wht,
                           gamma, **scalar)
    a_flat.index_copy_(0, flat, old + trust * (a_proj - old))
