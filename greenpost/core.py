"""GreenPost: key a (near-)green canvas image into straight foreground + alpha (+ spill map)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import torch

from .alpha import despeckle, dilate, dilate_coarse, difference_ratio, erode, estimate_screen, guided_refine, ratio_to_alpha
from .keycolour import MIN_KEY_DOMINANCE, NoKeyColourWarning, key_channels, key_difference, key_dominance, resolve_key_colour
from .screen import local_colour
from .unmix import despill, unmix

MIN_SIDE = 8


def canvas_noise(r: torch.Tensor, canvas: torch.Tensor | None, max_samples: int = 50_000) -> torch.Tensor:
    """r: [B,1,H,W] difference ratio, canvas: [B,1,H,W] confident-canvas map -> [B] robust std of r on the canvas."""
    out = []
    for i in range(r.shape[0]):
        v = r[i].flatten()
        if canvas is not None:
            v = v[canvas[i].flatten() > 0]
        else:
            v = v[v > 0.7]
        if v.numel() < 64:
            out.append(r.new_zeros(()))
            continue
        v = v[:: max(1, v.numel() // max_samples)]
        med = v.median()
        out.append(1.4826 * (v - med).abs().median())
    return torch.stack(out)


@dataclass
class GreenPostOptions:
    """Strength controls of :func:`green_post` (defaults tuned for generated and real green screens)."""

    black: float = 0.0  # linear key below which a pixel is pure canvas, 0..1 (added to the noise-adaptive part)
    white: float = 1.0  # linear key above which a pixel is opaque, 0..1 (less the noise-adaptive part)
    noise_black: float = 1.0  # black point += this x the canvas noise (robust std of the difference ratio)
    noise_white: float = 3.0  # white point -= this x the canvas noise (noise and spill come together)
    gamma: float = 1.0  # alpha gamma (>1 thins semi-transparent areas)
    local_screen: bool = True  # spatially varying screen colour (clean plate) instead of one flat key colour
    screen_cells: int = 64  # resolution of the clean plate (cells on the long side)
    fg_model: bool = True  # local foreground colour model: projection alpha on the screen-foreground line
    fg_cells: int = 128  # resolution of the local foreground colour (cells on the long side)
    fg_model_reach: int = 16  # px from confidently opaque pixels within which the foreground model applies
    fg_model_tol: float = 0.05  # colour distance from the screen-foreground line at which the model is ignored
    fg_erode: int = 2  # erosion (px) of the opaque region that feeds the foreground colour model
    fg_local_min: bool = True  # and keep only pixels at the local minimum of the difference ratio
    fg_opaque: float = 0.25  # difference ratio below which (eroded) pixels count as opaque foreground
    refine_radius: int = 1  # guided-filter radius in px (0 = off)
    refine_eps: float = 1e-4  # guided-filter regularisation (smaller keeps more edges)
    refine_subsample: int = 1  # fast guided filter: statistics on a grid this many times coarser
    refine_noise: float = 0.02  # canvas noise at which refinement applies fully (0 = always fully)
    despeckle_area: float = 2e-5  # faint islands smaller than this fraction of the image are removed (0 = off)
    hole_area: float = 0.0  # key-coloured holes smaller than this fraction of the image are filled (0 = off)
    unmix_reg: float = 0.001  # ridge of the unmixing where alpha is small
    despill: float = 1.0  # despill strength 0..1
    despill_limit: str = "max"  # "max" (G <= max(R,B)) or "avg" (G <= (R+B)/2)
    luma_preserve: float = 0.0  # fraction of the despilled luminance added back, 0..1
    share_key: bool = False  # one key colour for the whole batch (temporal stability for video)
    canvas_clean: float = 0.1  # with a given alpha: values below this on confident canvas become 0

    @classmethod
    def from_kwargs(cls, **kw) -> "GreenPostOptions":
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise ValueError(f"green_post: unknown option(s) {', '.join(bad)}; expected some of {', '.join(sorted(names))}")
        opts = cls(**kw)
        for name in ("black", "white", "despill", "luma_preserve", "canvas_clean"):
            v = getattr(opts, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {v!r}")
        if opts.white <= opts.black:
            raise ValueError(f"white: must be above black ({opts.black}), got {opts.white}")
        if not 0.1 <= opts.gamma <= 10:
            raise ValueError(f"gamma: expected a value in [0.1, 10], got {opts.gamma!r}")
        if opts.refine_radius < 0 or opts.despeckle_area < 0 or opts.hole_area < 0 or opts.unmix_reg <= 0:
            raise ValueError("refine_radius and despeckle_area must be >= 0 and unmix_reg > 0")
        return opts


@dataclass
class GreenPostResult:
    """fg [B,3,H,W] straight RGB in [0,1]; alpha [B,1,H,W] in [0,1] (1 = opaque); spill [B,1,H,W] in [0,1];
    key_colour [B,3] in [0,1]."""

    fg: torch.Tensor
    alpha: torch.Tensor
    spill: torch.Tensor
    key_colour: torch.Tensor
    extras: dict = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        """[B,1,H,W] in [0,1] in ComfyUI's polarity (1 = transparent)."""
        return 1.0 - self.alpha

    def rgba(self) -> torch.Tensor:
        """[B,4,H,W] straight RGB + alpha."""
        return torch.cat([self.fg, self.alpha], dim=1)


def _check_image(image) -> tuple[torch.Tensor, bool]:
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image: expected a torch tensor [B,3,H,W], got {type(image).__name__}")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"image: expected [B,3,H,W], got shape {tuple(image.shape)}")
    c = image.shape[1]
    if c == 4:
        raise ValueError("image: got 4 channels (RGBA); pass the RGB channels as image and, if the 4th channel is a "
                         "matte to keep, as alpha")
    if c not in (1, 3):
        raise ValueError(f"image: expected 3 channels (RGB) or 1 (grey), got {c} (shape {tuple(image.shape)})")
    if min(image.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"image: {image.shape[-1]}x{image.shape[-2]} px is too small; at least {MIN_SIDE}x{MIN_SIDE} px")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif image.dtype in (torch.int16, torch.int32, torch.uint16 if hasattr(torch, "uint16") else torch.int32):
        if image.dtype == torch.int16 or image.min() < 0:
            raise ValueError(f"image: integer type {image.dtype} must be uint8 or uint16")
        image = image.float() / 65535.0
    elif not image.is_floating_point():
        raise ValueError(f"image: expected float in [0,1], uint8 or uint16, got {image.dtype}")
    if not torch.isfinite(image).all():
        raise ValueError("image: contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"image: expected values in [0, 1], got [{lo:.3g}, {hi:.3g}] (divide 8-bit data by 255)")
    if c == 1:
        warnings.warn("image: greyscale input has no key colour; the result is opaque", NoKeyColourWarning, stacklevel=3)
        image = image.expand(-1, 3, -1, -1)
    return image.clamp(0, 1), c == 1


def _check_alpha(alpha, image: torch.Tensor) -> torch.Tensor | None:
    if alpha is None:
        return None
    if not isinstance(alpha, torch.Tensor):
        raise ValueError(f"alpha: expected a torch tensor [B,1,H,W] or None, got {type(alpha).__name__}")
    if alpha.ndim == 3:
        alpha = alpha[:, None]
    b, _, h, w = image.shape
    if alpha.ndim != 4 or alpha.shape[1] != 1 or alpha.shape[-2:] != (h, w) or alpha.shape[0] not in (1, b):
        raise ValueError(f"alpha: expected [B,1,H,W] = [{b},1,{h},{w}] (1 = opaque), got {tuple(alpha.shape)}")
    alpha = alpha.float()
    if not torch.isfinite(alpha).all():
        raise ValueError("alpha: contains NaN or infinite values")
    return alpha.expand(b, 1, h, w).clamp(0, 1).to(image.device)


def green_post(image: torch.Tensor, alpha: torch.Tensor | None = None, key_colour="auto", high_quality: bool = False,
               **options) -> GreenPostResult:
    """image: [B,3,H,W] float in [0,1] (+ alpha [B,1,H,W], 1 = opaque) -> GreenPostResult (fg straight, alpha, spill).

    ``key_colour``: "auto" (estimated from the canvas), a preset ("green", "blue", "magenta", ...), a hex colour or
    a ``[3]``/``[B,3]`` tensor. With ``alpha`` given (e.g. from the matting head) that matte is kept; GreenPost
    only zeroes faint values on confident canvas, unmixes and despills. ``high_quality`` adds closed-form
    matting in the uncertain band (slower). ``options``: see :class:`GreenPostOptions`.
    """
    opts = GreenPostOptions.from_kwargs(**options)
    out_dtype = image.dtype if isinstance(image, torch.Tensor) and image.is_floating_point() else torch.float32
    image, grey = _check_image(image)
    given = _check_alpha(alpha, image)
    img = image.float()
    b, _, h, w = img.shape

    key, found = resolve_key_colour(key_colour, img, share=opts.share_key, return_found=True)
    high = key_channels(key)
    usable = (key_dominance(key) >= MIN_KEY_DOMINANCE) & found  # [B]; no key colour -> opaque result
    if grey:
        usable = torch.zeros_like(usable)

    # 1. screen colour: local clean plate (or the flat key)
    if opts.local_screen:
        screen, canvas = estimate_screen(img, key, high, cells=opts.screen_cells)
    else:
        screen = key[:, :, None, None].expand(b, 3, h, w)
        canvas = None
    r = difference_ratio(img, screen, high)
    sigma = canvas_noise(r, canvas)  # [B]
    black = (opts.black + opts.noise_black * sigma).clamp(0, 0.2)[:, None, None, None]
    white_base = (opts.white - opts.noise_white * sigma).clamp(0.6, 1.0)[:, None, None, None]

    # 2. alpha: colour difference; where a local foreground colour is known (nearby opaque pixels) and the pixel
    #    lies on the line between the screen and that colour, the exact projection onto that line instead
    # confidently opaque: clearly off-key, and at the local minimum of r (ramps into the canvas are excluded)
    r_min = erode(r, 3)
    tol_min = (3.0 * sigma).clamp(min=0.04)[:, None, None, None]
    opaque = erode((r < opts.fg_opaque).float(), opts.fg_erode)
    if opts.fg_local_min:
        opaque = opaque * ((r - r_min) < tol_min).float()
    white = torch.maximum(white_base, black + 0.05)
    a = ratio_to_alpha(r, black, white, opts.gamma)
    fg_local = None
    if opts.fg_model:
        fg_local = local_colour(img, opaque, cells=opts.fg_cells, smooth=False)
        kf = fg_local - screen
        ki = img - screen
        kf2 = (kf * kf).sum(dim=1, keepdim=True)
        t = (ki * kf).sum(dim=1, keepdim=True) / kf2.clamp_min(1e-4)
        resid = (ki - t.clamp(0, 1) * kf).norm(dim=1, keepdim=True)
        trust = (1.0 - resid / opts.fg_model_tol).clamp(0, 1) * (kf2 > 0.01).float()
        if opts.fg_model_reach > 0:
            trust = trust * dilate_coarse(opaque, opts.fg_model_reach)
        a_proj = ratio_to_alpha(1.0 - t, black, white, opts.gamma)
        a = a + trust * (a_proj - a)

    # 3. refinement: guided filter in the transition band, then despeckle
    if opts.refine_radius > 0:
        trans = ((a > 0.0) & (a < 1.0)).float()
        band = dilate(trans, opts.refine_radius)
        # denoising strength follows the canvas noise: a clean (generated) canvas keeps its exact key
        wgt = (sigma / opts.refine_noise).clamp(0, 1)[:, None, None, None] if opts.refine_noise > 0 else 1.0
        a = a + wgt * (guided_refine(img, a, opts.refine_radius, opts.refine_eps, band=band,
                                        subsample=opts.refine_subsample) - a)
    if high_quality:
        from .hq import band_matting

        a = band_matting(img, a)
    if opts.despeckle_area > 0 or opts.hole_area > 0:
        a = despeckle(a, max(8, int(round(opts.despeckle_area * h * w))) if opts.despeckle_area > 0 else 0,
                      int(round(opts.hole_area * h * w)))

    # 4. a given matte wins; the keyer only cleans its canvas
    if given is not None:
        clean = (a <= 0.0) & (given < opts.canvas_clean)  # the keyer sees pure canvas and the matte is faint
        a = torch.where(clean, torch.zeros_like(given), given)

    # 5. unmix against the local screen, despill
    if fg_local is None:
        fg_local = local_colour(img, opaque, cells=128, smooth=False)
    fg = unmix(img, a, screen, prior=fg_local, reg=opts.unmix_reg)
    if opts.despill > 0:
        fg, s = despill(fg, high, opts.despill, opts.luma_preserve, opts.despill_limit)
    else:
        s = torch.zeros_like(a)
    d_k = key_difference(screen, high).clamp_min(0.05)
    spill = (s / d_k).clamp(0, 1) * (a > 0).float()

    # images without a usable key colour: defined, opaque result
    if not bool(usable.all()):
        keep = usable[:, None, None, None]
        a = torch.where(keep, a, given if given is not None else torch.ones_like(a))
        fg = torch.where(keep, fg, img)
        spill = torch.where(keep, spill, torch.zeros_like(spill))

    return GreenPostResult(fg=fg.to(out_dtype), alpha=a.to(out_dtype), spill=spill.to(out_dtype),
                           key_colour=key.to(out_dtype), extras={"screen": screen})
