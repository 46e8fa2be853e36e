"""Stage 1, the screen: the clean plate (spatially varying screen colour) on a coarse grid, scattered-data fill
(push-pull), the lit-screen trend, and the canvas noise. Batch-wide: no per-image loops, no host syncs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.keycolour import key_difference
from .band import downsample, morph, pool_factor, upsample

SAMPLES = 20_000  # robust statistics (medians) read on a regular subsample of at most about this many pixels


def masked_median(values: torch.Tensor, mask: torch.Tensor, max_samples: int = SAMPLES
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """values: [B,N] float, mask: [B,N] bool -> (median [B] (NaN where a row has nothing masked), the pixels read
    [B,N] bool). Each row's masked values are read on every k-th one in order (k = count // max_samples, at least
    1: a regular subsample bounding the cost); the lower of the two middle values for an even count."""
    count = mask.sum(dim=1, keepdim=True)
    step = (count // max_samples).clamp_min(1)
    read = mask & ((mask.cumsum(dim=1) - 1) % step == 0)
    return torch.where(read, values, torch.nan).nanmedian(dim=1).values, read


def canvas_noise(r: torch.Tensor, canvas: torch.Tensor | None, max_samples: int = SAMPLES) -> torch.Tensor:
    """r: [B,1,H,W] difference ratio, canvas: [B,1,H,W] confident-canvas map (None: r > 0.7 counts) -> [B] robust
    std (1.4826 x median absolute deviation) of r on the canvas; 0 where fewer than 64 canvas pixels."""
    v = r.flatten(1)
    mask = (canvas.flatten(1) > 0) if canvas is not None else v > 0.7
    med, read = masked_median(v, mask, max_samples)
    mad = torch.where(read, (v - med[:, None]).abs(), torch.nan).nanmedian(dim=1).values
    return torch.where(mask.sum(dim=1) >= 64, 1.4826 * mad, torch.zeros_like(mad))


def push_pull_fill(values: torch.Tensor, weights: torch.Tensor, full: float = 0.5) -> torch.Tensor:
    """values: [B,C,h,w], weights: [B,1,h,w] in [0,1] -> [B,C,h,w] smooth fill of the weighted values everywhere.

    Weighted pyramid down to 1x1 (push), then back up, keeping each level's own mean where its weight is at least
    ``full`` and blending towards the coarser estimate below that (pull). Pixels with zero weight everywhere in
    an image get that image's weighted mean (or 0 when every weight is 0).
    """
    c = values.shape[1]
    vw = torch.cat([values * weights, weights], dim=1)  # values and weights pooled together: one op per level
    levels = [vw]
    while min(vw.shape[-2:]) > 1:
        vw = F.avg_pool2d(vw, 2, ceil_mode=True)
        levels.append(vw)
    # coarsest level: mean over whatever is left (already ~1 px); an empty image keeps 0
    total = vw.sum(dim=(-2, -1), keepdim=True)
    est = (total[:, :c] / total[:, c:].clamp_min(1e-12)).expand(-1, -1, *vw.shape[-2:])
    for vw in reversed(levels):
        up = F.interpolate(est, size=vw.shape[-2:], mode="bilinear", align_corners=False)
        w = vw[:, c:]
        est = torch.lerp(up, vw[:, :c] / w.clamp_min(1e-12), (w / full).clamp_(0, 1))  # t own + (1 - t) up
    return est


def radial_trend(values: torch.Tensor, weights: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """values: [B,C,h,w], weights: [B,1,h,w] in [0,1] -> [B,C,h,w] per image and channel the weighted least-squares
    fit of ``c0 + c1 x + c2 y + c3 (x^2 + y^2)`` (isotropic coordinates about the image centre), clamped to the
    range of the weighted values widened by half that range. Fitted robustly (cells more than 3 robust deviations
    off the fit are dropped, up to 3 rounds); an image with fewer than 8 cells of weight gets its weighted mean.

    Why: a lit screen has a linear gradient and a radial falloff (vignetting); under a large subject the plate is
    unseen, and a plain fill carries the border values inward. The radial term is one shared curvature, so a canvas
    seen only along one border still fixes it (from the border's own extent); the clamp keeps the extrapolation
    near what the canvas shows."""
    b, c, h, w = values.shape
    half = max(h, w) / 2
    ys = (torch.arange(h, device=values.device, dtype=values.dtype) + 0.5 - h / 2) / half
    xs = (torch.arange(w, device=values.device, dtype=values.dtype) + 0.5 - w / 2) / half
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    basis = torch.stack([torch.ones_like(xx), xx, yy, xx * xx + yy * yy]).reshape(4, -1)  # [4,N]
    penalty = torch.diag(torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=values.dtype, device=values.device))  # level free
    wt = weights.reshape(b, -1)  # [B,N]
    v = values.reshape(b, c, -1)  # [B,C,N]
    flat = wt.sum(dim=1) < 8  # too few canvas cells to fit four terms: the weighted mean
    active = ~flat  # images still refining (the loop's early exit, per image, without a host sync)
    fit = v
    for _ in range(3):  # robust: cells far off the fit (a trace of the subject's edge) are dropped and refitted
        bw = basis * wt[:, None]  # [B,4,N]
        a = bw @ basis.T + ridge * wt.sum(dim=1)[:, None, None] * penalty
        a = torch.where(active[:, None, None], a, torch.eye(4, dtype=a.dtype, device=a.device))  # keep it solvable
        coef = torch.linalg.solve(a, bw @ v.transpose(1, 2))  # [B,4,C]
        new = coef.transpose(1, 2) @ basis  # [B,C,N]
        fit = torch.where(active[:, None, None], new, fit)
        dev = (v - fit).abs().amax(dim=1)  # [B,N]
        spread = 1.4826 * torch.where(wt > 0, dev, torch.nan).nanmedian(dim=1).values
        keep = (dev <= 3.0 * spread.clamp_min(1e-3)[:, None]).to(wt.dtype)
        settled = ((keep > 0) | (wt <= 0)).all(dim=1) | ((wt * keep).sum(dim=1) < 8)
        wt = torch.where((active & ~settled)[:, None], wt * keep, wt)
        active = active & ~settled
    seen = wt > 0
    lo = torch.where(seen[:, None], v, torch.inf).amin(dim=2, keepdim=True)
    hi = torch.where(seen[:, None], v, -torch.inf).amax(dim=2, keepdim=True)
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)  # a falloff may peak where the canvas is unseen
    trend = torch.maximum(torch.minimum(fit, hi), lo)
    w0 = weights.reshape(b, 1, -1)
    mean = (v * w0).sum(dim=2, keepdim=True) / w0.sum(dim=2, keepdim=True).clamp_min(1e-12)
    return torch.where(flat[:, None, None], mean.expand_as(v), trend).reshape(b, c, h, w)


def cell_grid(image: torch.Tensor, confidence: torch.Tensor, factor: int, smooth: bool = False,
              trend: bool = False) -> torch.Tensor:
    """image [B,C,H,W], confidence [B,1,H,W] in [0,1] -> [B,C,ceil(H/f),ceil(W/f)] confident cell means, push-pull
    filled where a cell has none (the clean plate of the screen, the local foreground colour)."""
    if factor > 1:
        v = F.avg_pool2d(image * confidence, factor, ceil_mode=True)
        c = F.avg_pool2d(confidence, factor, ceil_mode=True)
    else:
        v, c = image * confidence, confidence
    mean = v / c.clamp_min(1e-12)
    device = mean.device
    with host_statistics():
        # the fill and the trend fit run on cell grids of at most a few thousand cells: hundreds of tiny ops that a
        # GPU would launch one by one (and a 4x4 solve per image); on the host they cost well under a millisecond
        mean, c = mean.cpu(), c.cpu()
        if trend:  # fill the residual from a smooth trend (unseen plate under a large subject; see radial_trend)
            base = radial_trend(mean, c)  # robust fit: cells bordering the subject may carry a trace of its edge
            low = base + push_pull_fill(mean - base, c)
        else:
            low = push_pull_fill(mean, c)
        if smooth and min(low.shape[-2:]) >= 3:
            low = F.avg_pool2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return low.to(device)


HOST_STATISTICS = "greenpost.host_statistics"  # profiler label of the host-side steps (bench/greenpost_ops.py)


def host_statistics():
    """A profiler range marking work on small host copies (cell grids): not device launches."""
    return torch.profiler.record_function(HOST_STATISTICS)


def clean_plate(img: torch.Tensor, key: torch.Tensor, high: torch.Tensor, cells: int, trend: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """img [B,3,H,W] in [0,1], key [B,3] (img's device), high [B,3] bool (CPU) -> (screen grid [B,3,h,w] (about
    ``cells`` on the long side), confident-canvas map [B,1,H/s,W/s] on the statistics grid, s).

    The clean plate is estimated on an s-times area-reduced image (each plate cell spans about 3 reduced pixels) in
    two passes: pixels whose colour difference is at least 0.7 of the key's and whose colour is near the key give a
    rough plate; then only pixels within the canvas noise of that plate (eroded) are averaged per cell and filled
    under the subject (push-pull; with ``trend``, of the residual from a gradient + radial-falloff fit of the
    canvas), so semi-transparent edges do not leak into it. An image with (almost) no canvas keeps the flat key."""
    from .alpha import difference_ratio

    h, w = img.shape[-2:]
    s = max(1, pool_factor(h, w, cells) // 3)
    small = downsample(img, s)
    margin = 1 if s > 1 else 2
    k = key[:, :, None, None]
    r = difference_ratio(small, k, high)
    near = (small - k).abs().amax(dim=1, keepdim=True) < 0.3
    conf = morph(((r > 0.7) & (r < 1.6) & near).float(), margin, "min")
    has = conf.flatten(1).mean(dim=1) > 0.01
    fs = pool_factor(small.shape[-2], small.shape[-1], cells)
    rough = upsample(cell_grid(small, conf, fs, smooth=True), small.shape[-2:])
    r2 = difference_ratio(small, rough, high)
    spread, _ = masked_median((r2 - 1).abs().flatten(1), conf.flatten(1) > 0)
    spread = torch.nan_to_num(spread, nan=0.0)  # no canvas: the lowest tolerance (the plate is the flat key anyway)
    tol = (1.4826 * 4.0 * spread).clamp(0.03, 0.3)[:, None, None, None]
    conf = morph((((r2 - 1).abs() < tol) & (conf > 0)).float(), margin, "min")
    grid = cell_grid(small, conf, fs, smooth=True, trend=trend)
    grid = torch.where(has[:, None, None, None], grid, k.expand_as(grid))
    return grid, conf, s


def screen_difference(screen_grid: torch.Tensor, high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """screen_grid [B,3,h,w] (or the flat key [B,3,1,1]), high [B,3] bool -> [B,1,H,W] the screen's colour
    difference at full resolution, at least 0.05 (the divisor of the difference ratio)."""
    b = screen_grid.shape[0]
    return upsample(key_difference(screen_grid, high).clamp_min(0.05), size).expand(b, 1, *size)
