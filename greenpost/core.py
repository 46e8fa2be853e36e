"""GreenPost: key a (near-)green canvas image into straight foreground + alpha (+ spill map)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import torch

from .alpha import despeckle, difference_ratio, ratio_to_alpha
from .band import (bbox, cell_grid, chroma_detail_ratio, colour_guided_filter, downsample, guided_filter, morph,
                   pool_factor, upsample, upsample_planes)
from ..common.keycolour import (MIN_KEY_DOMINANCE, KeyColour, NoKeyColourWarning, key_channels, key_difference,
                                key_dominance, key_rgb, resolve_key_colours)
from ..common.checks import check_unit_range
from .guide import blend_guide, check_guide, fit_guide, guide_change
from .unmix import despill

MIN_SIDE = 8
# Peak working memory of green_post per input pixel (batch x height x width), above the input itself: measured on CPU
# (float32, OpenCV paths, default and high-quality mode alike) at 130-176 bytes per pixel for 1-9 Mpx; the larger
# figure is used. So 1 GB of free memory keys about 6 Mpx at a time (4K UHD: 1.3 GB, 8K UHD: 5.3 GB). Larger
# inputs are refused up front with the limit named (see check_memory) instead of failing deep inside.
KEYING_BYTES_PER_PIXEL = 176
_MEMORY_CHECK_FROM = 256 * 2**20  # smaller calls (about 1.5 Mpx) skip the probe
CHROMA_SUBSAMPLED = 0.5  # band chroma_detail_ratio below this: subsampled (bench, 320 px window: <= 0.32 vs >= 0.55)


def canvas_noise(r: torch.Tensor, canvas: torch.Tensor | None, max_samples: int = 20_000) -> torch.Tensor:
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
    noise_black: float = 2.0  # black point += this x the canvas noise (robust std of the difference ratio)
    noise_white: float = 3.0  # white point -= this x the canvas noise (noise and spill come together)
    gamma: float = 1.0  # alpha gamma (>1 thins semi-transparent areas)
    local_screen: bool = True  # spatially varying screen colour (clean plate) instead of one flat key colour
    screen_cells: int = 64  # resolution of the clean plate (cells on the long side)
    screen_trend: bool = True  # fill the plate under the subject on a robust gradient + radial-falloff trend of
    # the canvas (screen.radial_trend) instead of carrying the border values inward
    fg_model: bool = True  # local foreground colour model: projection alpha on the screen-foreground line
    fg_cells: int = 128  # resolution of the local foreground colour (cells on the long side)
    fg_model_reach: int = 16  # px from confidently opaque pixels within which the foreground model applies
    fg_model_tol: float = 0.05  # colour distance from the screen-foreground line at which the model is ignored
    fg_model_tol_subsampled: float = 0.12  # ... in high-quality mode when the chroma looks subsampled (JPEG, video
    # 4:2:0): each pixel's chroma is then a mix of its neighbours', which moves it off the line (value set on the
    # development mattes' JPEG variant; on lossless images 0.12 loses fine detail, hence only here)
    fg_erode: int = 2  # erosion (px) of the opaque region that feeds the foreground colour model
    fg_local_min: bool = True  # and keep only pixels at the local minimum of the difference ratio
    fg_opaque: float = 0.25  # difference ratio below which (eroded) pixels count as opaque foreground
    fg_scalar: float = 1.0  # where the projection is not trusted: weight of the scalar model a = v / v(F_local)
    fg_scalar_angle: float = 0.35  # sine of the angle between I-K and F_local-K at which the scalar model is ignored
    fg_scalar_lo: float = 0.7  # the scalar model lowers alpha fully below this model alpha, tapering to none at
    fg_scalar_hi: float = 0.9  # ... this one (an opaque pixel of another colour than its neighbours stays opaque)
    refine_radius: int = 4  # guided-filter radius in px (0 = off)
    refine_eps: float = 1e-4  # guided-filter regularisation, squared colour units (smaller keeps more edges)
    refine_eps_noise: float = 1.0  # ... plus this x the canvas noise squared (noisy shots are smoothed more)
    refine_fit_blur: int = -1  # box radius (px) blurring guide and alpha for the fit, the sharp guide then applied
    # (restores detail lost to chroma subsampling); -1: auto = in high-quality mode 1 when the image's chroma looks
    # subsampled (JPEG, video 4:2:0), otherwise 0 (the check costs about 7 % of the default mode's time)
    refine_colour: bool = True  # colour guide (local colour-line model); False: grey guide (cheaper)
    refine_subsample: int = 2  # fast guided filter: coefficients on a grid this many times coarser (speed)
    refine_noise: float = 0.0  # canvas noise at which refinement applies fully (0 = always fully)
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
        """Options by name -> GreenPostOptions; ``ValueError`` naming the option and its range for an unknown name,
        a wrong type, NaN/inf or a value out of range (checked before any work)."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise ValueError(f"green_post: unknown option(s) {', '.join(bad)}; expected some of {', '.join(sorted(names))}")
        values = {}
        for name, value in kw.items():
            values[name] = _check_option(name, value)
        opts = cls(**values)
        if opts.white <= opts.black:
            raise ValueError(f"white: must be above black ({opts.black}), got {opts.white}")
        if opts.fg_scalar_hi <= opts.fg_scalar_lo:
            raise ValueError(f"fg_scalar_hi: must be above fg_scalar_lo ({opts.fg_scalar_lo}), got {opts.fg_scalar_hi}")
        return opts


# Every option's kind and range: (kind, low, high, low_open). Bounds keep the maths defined (no division by zero, no
# NaN) and the work bounded (radii and grid sizes that fit in memory); the defaults sit well inside them.
_OPTION_RANGES: dict[str, tuple] = {
    "black": ("float", 0.0, 1.0, False), "white": ("float", 0.0, 1.0, False),
    "noise_black": ("float", 0.0, 100.0, False), "noise_white": ("float", 0.0, 100.0, False),
    "gamma": ("float", 0.1, 10.0, False),
    "local_screen": ("bool",), "screen_cells": ("int", 1, 1024, False), "screen_trend": ("bool",),
    "fg_model": ("bool",), "fg_cells": ("int", 1, 1024, False), "fg_model_reach": ("int", 0, 1024, False),
    "fg_model_tol": ("float", 0.0, 2.0, True), "fg_model_tol_subsampled": ("float", 0.0, 2.0, True),
    "fg_erode": ("int", 0, 64, False), "fg_local_min": ("bool",), "fg_opaque": ("float", 0.0, 1.0, False),
    "fg_scalar": ("float", 0.0, 1.0, False), "fg_scalar_angle": ("float", 0.0, 1.0, True),
    "fg_scalar_lo": ("float", 0.0, 1.0, False), "fg_scalar_hi": ("float", 0.0, 1.0, False),
    "refine_radius": ("int", 0, 256, False), "refine_eps": ("float", 0.0, 1.0, True),
    "refine_eps_noise": ("float", 0.0, 1000.0, False), "refine_fit_blur": ("int", -1, 16, False),
    "refine_colour": ("bool",), "refine_subsample": ("int", 1, 16, False), "refine_noise": ("float", 0.0, 10.0, False),
    "despeckle_area": ("float", 0.0, 1.0, False), "hole_area": ("float", 0.0, 1.0, False),
    "unmix_reg": ("float", 0.0, 1.0, True), "despill": ("float", 0.0, 1.0, False),
    "despill_limit": ("choice", "max", "avg"), "luma_preserve": ("float", 0.0, 1.0, False),
    "share_key": ("bool",), "canvas_clean": ("float", 0.0, 1.0, False),
}


def _check_option(name: str, value):
    """One option's value -> the value as its kind (int / float / bool / str); ``ValueError`` naming the range."""
    spec = _OPTION_RANGES[name]
    kind = spec[0]
    if kind == "bool":
        if isinstance(value, bool) or (hasattr(value, "dtype") and str(getattr(value, "dtype")) == "bool"):
            return bool(value)
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    if kind == "choice":
        if value not in spec[1:]:
            raise ValueError(f"{name}: expected one of {', '.join(map(repr, spec[1:]))}, got {value!r}")
        return value
    _, lo, hi, lo_open = spec
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number in {interval}, got {value!r}")
    if kind == "int":
        if number != int(number):
            raise ValueError(f"{name}: expected a whole number in {interval}, got {value!r}")
        number = int(number)
    if number < lo or number > hi or (lo_open and number == lo):
        raise ValueError(f"{name}: expected a {'whole ' if kind == 'int' else ''}number in {interval}, got {value!r}")
    return number


@dataclass
class GreenPostResult:
    """fg [B,3,H,W] straight RGB in [0,1]; alpha [B,1,H,W] in [0,1] (1 = opaque); spill [B,1,H,W] in [0,1];
    key_colour [B,3] in [0,1]; keys: the B KeyColours keyed against (how each was obtained)."""

    fg: torch.Tensor
    alpha: torch.Tensor
    spill: torch.Tensor
    key_colour: torch.Tensor
    keys: list[KeyColour] = field(default_factory=list)
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
    if image.shape[0] == 0:
        raise ValueError(f"image: empty batch (shape {tuple(image.shape)}); expected at least one image")
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
    lo, hi = (float(v) for v in torch.aminmax(image))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image: contains NaN or infinite values")
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"image: expected values in [0, 1], got [{lo:.3g}, {hi:.3g}] (divide 8-bit data by 255)")
    if c == 1:
        warnings.warn("image: greyscale input has no key colour; the result is opaque", NoKeyColourWarning, stacklevel=3)
        image = image.expand(-1, 3, -1, -1)
    if lo < 0.0 or hi > 1.0:
        image = image.clamp(0, 1)
    return image, c == 1


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
    check_unit_range("alpha", alpha)  # resampling overshoot is clipped below; an inverted / offset mask is refused
    return alpha.expand(b, 1, h, w).clamp(0, 1).to(image.device)


def available_memory(device) -> int | None:
    """Bytes of memory free for new tensors on ``device`` (CPU: the OS's MemAvailable; CUDA: free + cached by
    torch), or None when it cannot be told."""
    device = torch.device(device)
    try:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
        if device.type == "cpu":
            try:
                with open("/proc/meminfo") as f:
                    for line in f:
                        if line.startswith("MemAvailable:"):
                            return int(line.split()[1]) * 1024
            except OSError:
                pass
            import os

            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
    return None


def check_memory(batch: int, height: int, width: int, device="cpu") -> None:
    """Refuse (``ValueError`` naming the size, the need and the limit) a keying job larger than the free memory:
    ``batch x height x width`` input pixels at :data:`KEYING_BYTES_PER_PIXEL` each."""
    pixels = batch * height * width
    need = pixels * KEYING_BYTES_PER_PIXEL
    if need < _MEMORY_CHECK_FROM:
        return
    avail = available_memory(device)
    if avail is None or need <= avail:
        return
    fit = avail // KEYING_BYTES_PER_PIXEL
    side = int(math.sqrt(fit))
    frames = f"{batch} x " if batch > 1 else ""
    raise ValueError(f"image: {frames}{width}x{height} px ({pixels / 1e6:.1f} Mpx) needs about {need / 1e9:.1f} GB to "
                     f"key ({KEYING_BYTES_PER_PIXEL} bytes per pixel) but {avail / 1e9:.1f} GB is free on "
                     f"{torch.device(device).type}: at most about {fit / 1e6:.0f} Mpx fit now (e.g. {side}x{side}); "
                     "downscale or crop it" + (", or key fewer frames at a time" if batch > 1 else ""))


def green_post(image: torch.Tensor, alpha: torch.Tensor | None = None, key_colour="auto", high_quality: bool = False,
               guide: torch.Tensor | None = None, **options) -> GreenPostResult:
    """image: [B,3,H,W] float in [0,1] (+ alpha [B,1,H,W], 1 = opaque) -> GreenPostResult (fg straight, alpha, spill).

    ``key_colour``: "auto" (estimated from the canvas), a KeyColour (or a list of B), a preset ("chroma_green",
    "pure_green", "magenta", ...), a hex colour or a ``[3]``/``[B,3]`` tensor (see ``common.keycolour``). With ``alpha`` given (e.g. from the matting head) that matte is kept; GreenPost
    only zeroes faint values on confident canvas, unmixes and despills. ``high_quality`` averages in a second,
    coarser refinement scale and fits JPEG / video (chroma-subsampled) images on a blurred guide (a little
    slower). ``guide`` ([B|1,1,h,w], 1 = opaque, any size of the image's aspect ratio): a previous alpha of the object
    (the round trip, ``greenpost.guide``), not kept as the matte: the result follows it where the image is still a
    composite of it over the key colour and GreenPost's own key where the image changed; a smaller guide is
    upsampled with the image as guidance (``extras["guide_weight"]``: [B,1,H,W], 1 where the own key decided).
    ``options``: see :class:`GreenPostOptions`.
    """
    if not isinstance(high_quality, bool) and not (isinstance(high_quality, int) and high_quality in (0, 1)):
        raise ValueError(f"high_quality: expected True or False, got {high_quality!r}")  # 'no' would be truthy
    opts = GreenPostOptions.from_kwargs(**options)
    out_dtype = image.dtype if isinstance(image, torch.Tensor) and image.is_floating_point() else torch.float32
    image, grey = _check_image(image)
    given = _check_alpha(alpha, image)
    if guide is not None and given is not None:
        raise ValueError("guide: pass either alpha (kept as the final matte) or guide (a previous alpha that steers "
                         "the key), not both")
    guide = None if guide is None else check_guide(guide, image)
    check_memory(image.shape[0], image.shape[-2], image.shape[-1], image.device)
    with torch.no_grad():
        return _green_post(image, given, grey, key_colour, high_quality, opts, out_dtype, guide)


def _screen_lowres(img: torch.Tensor, key: torch.Tensor, high: torch.Tensor, cells: int, trend: bool = True):
    """img [B,3,H,W] -> (screen grid [B,3,h,w] (about ``cells`` on the long side), confident-canvas map
    [B,1,H/s,W/s] on the statistics grid, s). The clean plate is estimated on an s-times area-reduced image
    (each plate cell spans about 3 reduced pixels) in two passes: pixels whose colour difference is at least 0.7
    of the key's and whose colour is near the key give a rough plate; then only pixels within the canvas noise of
    that plate (eroded) are averaged per cell and filled under the subject (push-pull; with ``trend``, of the
    residual from a gradient + radial-falloff fit of the canvas), so semi-transparent edges do not leak into it."""
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
    spread = []
    for i in range(r2.shape[0]):
        v = (r2[i] - 1).abs()[conf[i] > 0]
        v = v[:: max(1, v.numel() // 20_000)]
        spread.append(v.median() if v.numel() else r2.new_zeros(()))
    tol = (1.4826 * 4.0 * torch.stack(spread)).clamp(0.03, 0.3)[:, None, None, None]
    conf = morph((((r2 - 1).abs() < tol) & (conf > 0)).float(), margin, "min")
    grid = cell_grid(small, conf, fs, smooth=True, trend=trend)
    grid = torch.where(has[:, None, None, None], grid, k.expand_as(grid))
    return grid, conf, s


def _chroma_subsampled(crop: torch.Tensor, band: torch.Tensor, window: int = 320, min_pixels: int = 2000) -> bool:
    """crop [1,3,h,w], band [h,w] bool -> whether the chroma looks subsampled (JPEG / video 4:2:0), read on at most
    a window x window part of the crop centred on a band pixel (a property of the whole image; bounded cost).
    Too little band to judge: False (the sharp fit, right for lossless images)."""
    h, w = band.shape
    if h * w > window * window:
        rows = band.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return False
        cy = int(rows[rows.numel() // 2])  # a band pixel in the middle rows (a centroid may fall in a hole of a
        cols = band[cy].nonzero().squeeze(1)  # ring-shaped band)
        cx = int(cols[cols.numel() // 2])
        y0, x0 = max(0, min(h - window, cy - window // 2)), max(0, min(w - window, cx - window // 2))
        crop = crop[..., y0 : y0 + window, x0 : x0 + window].contiguous()
        band = band[y0 : y0 + window, x0 : x0 + window]
    if min(band.shape) < 16 or int(band.sum()) < min_pixels:
        return False
    return float(chroma_detail_ratio(crop, band[None, None])[0]) < CHROMA_SUBSAMPLED


def _transition_band(a: torch.Tensor, radius: int):
    """a [1,1,H,W] alpha -> (band [H,W] bool: 0 < alpha < 1 dilated by ``radius``, its bounding box (y0, y1, x0, x1)
    padded by a refinement window, or None when there is no transition)."""
    band = morph(((a > 0) & (a < 1)).to(torch.uint8), radius, "max")[0, 0] > 0
    return band, bbox(band, 2 * radius + 1)


def _scalar_model(a: torch.Tensor, r: torch.Tensor, ki: torch.Tensor, kf: torch.Tensor, kk: torch.Tensor,
                  kf2: torch.Tensor, trust: torch.Tensor, high: torch.Tensor, black, white,
                  opts: GreenPostOptions) -> torch.Tensor:
    """Scalar foreground-colour model at N pixels: a [N] alpha so far, r [N] difference ratio, ki = I - K, kf = F_local
    - K, kk = K (each [3,N]), kf2 = |kf|^2 [N], trust [N] of the projection model in [0,1], high [1,3] -> alpha [N].

    The pixel is taken as a mix of the screen and a colour whose key difference is the local foreground colour's
    (alpha = linear key / linear key of F_local). It needs only the direction of I - K to agree roughly with
    F_local - K, so it reaches hair whose colour is not exactly the opaque pixels'. It only lowers alpha
    (over-opacity of non-key-coloured semi-transparent pixels is the colour-difference key's main error) and leaves
    pixels it would keep nearly opaque alone."""
    d_f = key_difference((kf + kk)[None, :, :, None], high)[0, 0, :, 0]
    d_s = key_difference(kk[None, :, :, None], high)[0, 0, :, 0].clamp_min(0.05)
    v_f = (1.0 - d_f / d_s).clamp_min(1.0)
    a_sc = ratio_to_alpha(1.0 - (1.0 - r) / v_f, black, white, opts.gamma)
    ki2 = (ki[0] * ki[0] + ki[1] * ki[1] + ki[2] * ki[2]).clamp_min(1e-6)
    cos = (ki[0] * kf[0] + ki[1] * kf[1] + ki[2] * kf[2]) / (ki2 * kf2.clamp_min(1e-6)).sqrt()
    sin = torch.where(cos > 0, (1 - cos.clamp(max=1) ** 2).sqrt(), torch.ones_like(cos))
    w_sc = opts.fg_scalar * (1 - sin / opts.fg_scalar_angle).clamp(0, 1) * (1 - trust)
    w_sc *= ((opts.fg_scalar_hi - a_sc) / (opts.fg_scalar_hi - opts.fg_scalar_lo)).clamp(0, 1)
    return a + w_sc * (a_sc - a).clamp(max=0)


def _green_post(image, given, grey, key_colour, high_quality, opts, out_dtype, guide=None) -> GreenPostResult:
    img = image.float().contiguous()  # one copy of a permuted view (e.g. from HWC) makes every later pass cheaper
    b, _, h, w = img.shape
    size = (h, w)

    keys = resolve_key_colours(key_colour, img, share=opts.share_key)
    key = key_rgb(keys, b, img.device)
    found = torch.tensor([k.found for k in keys], device=img.device)
    high = key_channels(key)
    usable = (key_dominance(key) >= MIN_KEY_DOMINANCE) & found  # [B]; no key colour -> opaque result
    if grey:
        usable = torch.zeros_like(usable)

    memo = {}

    def at(grid: torch.Tensor, i: int, idx: torch.Tensor) -> torch.Tensor:  # [3,N] bilinear upsample of a grid at idx
        k = (id(grid), i)
        if k not in memo:  # upsampled once per image
            memo[k] = upsample_planes(grid[i], size).reshape(grid.shape[1], -1)
        return memo[k].index_select(1, idx)

    # 1. screen colour: local clean plate on a coarse grid (statistics at reduced resolution), or the flat key
    if opts.local_screen:
        screen_grid, canvas_s, s = _screen_lowres(img, key, high, opts.screen_cells, opts.screen_trend)
    else:
        screen_grid, canvas_s, s = key[:, :, None, None], None, 1
    d_k = upsample(key_difference(screen_grid, high).clamp_min(0.05), size).expand(b, 1, h, w)
    r = key_difference(img, high).div_(d_k)  # difference ratio: 1 on the screen, <= 0 on a non-key foreground
    sigma = canvas_noise(r[..., ::s, ::s], canvas_s) if canvas_s is not None else canvas_noise(r, None)  # [B]
    black = (opts.black + opts.noise_black * sigma).clamp(0, 0.2)[:, None, None, None]
    white_base = (opts.white - opts.noise_white * sigma).clamp(0.6, 1.0)[:, None, None, None]
    white = torch.maximum(white_base, black + 0.05)

    # 2. alpha: colour difference; where a local foreground colour is known (nearby opaque pixels) and the pixel
    #    lies on the line between the screen and that colour, the exact projection onto that line instead.
    #    Confidently opaque: clearly off-key, and at the local minimum of r (ramps into the canvas are excluded).
    a = ratio_to_alpha(r, black, white, opts.gamma)
    # JPEG / video chroma (high-quality mode): judged once per image on the colour-difference transition band
    subsampled = [False] * b
    if high_quality and opts.refine_radius > 0:
        for i in range(b):
            band, box_ = _transition_band(a[i : i + 1], opts.refine_radius)
            if box_ is not None:
                y0, y1, x0, x1 = box_
                subsampled[i] = _chroma_subsampled(img[i : i + 1, :, y0:y1, x0:x1], band[y0:y1, x0:x1])
    # confidently opaque pixels (on an area-reduced image; they feed the local foreground colour of the model and
    # the unmixing prior) and the region within reach of them where the model may apply
    so = max(1, pool_factor(h, w, opts.fg_cells) // 3)
    small = downsample(img, so)
    r_s = key_difference(small, high).div_(upsample(key_difference(screen_grid, high).clamp_min(0.05),
                                                   small.shape[-2:]))
    opaque = morph((r_s < opts.fg_opaque).to(torch.uint8), -(-opts.fg_erode // so), "min").bool()
    if opts.fg_local_min:
        tol_min = (3.0 * sigma).clamp(min=0.04)[:, None, None, None]
        opaque &= (r_s - morph(r_s, -(-3 // so), "min")) < tol_min
    fg_grid = cell_grid(small, opaque.float(), pool_factor(small.shape[-2], small.shape[-1], max(1, opts.fg_cells)))
    reach_px = opts.fg_model_reach if opts.fg_model_reach > 0 else max(h, w)
    reach = morph(opaque.to(torch.uint8), -(-reach_px // so), "max") > 0
    if opts.fg_model:
        # the model changes alpha near the colour-difference transition (an over-opaque edge lies next to it)
        a_s = ratio_to_alpha(r_s, black, white, opts.gamma)
        near_edge = morph(((a_s > 0) & (a_s < 1)).to(torch.uint8), -(-max(1, reach_px // 2) // so), "max") > 0
        region = reach & ~opaque & near_edge
        for i in range(b):
            reg = region[i, 0]
            if so > 1:
                reg = reg.repeat_interleave(so, dim=0).repeat_interleave(so, dim=1)[:h, :w]
            idx = reg.flatten().nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            ki = img[i].reshape(3, -1).index_select(1, idx)
            kk = at(screen_grid, i, idx) if canvas_s is not None else key[i][:, None]
            kf = at(fg_grid, i, idx) - kk
            ki = ki - kk
            kf2 = kf[0] * kf[0] + kf[1] * kf[1] + kf[2] * kf[2]
            t = (ki[0] * kf[0] + ki[1] * kf[1] + ki[2] * kf[2]) / kf2.clamp_min(1e-4)
            d = ki - t.clamp(0, 1) * kf
            resid = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt_()
            tol = opts.fg_model_tol_subsampled if subsampled[i] else opts.fg_model_tol
            trust = (1.0 - resid / tol).clamp(0, 1) * (kf2 > 0.01).float()
            a_proj = ratio_to_alpha(1.0 - t, black[i, 0, 0, 0], white[i, 0, 0, 0], opts.gamma)
            old = a[i, 0].view(-1).index_select(0, idx)
            if opts.fg_scalar > 0:
                r_i = r[i, 0].view(-1).index_select(0, idx)
                old = _scalar_model(old, r_i, ki, kf, kk, kf2, trust, high[i : i + 1], black[i, 0, 0, 0],
                                    white[i, 0, 0, 0], opts)
            a[i, 0].view(-1).index_copy_(0, idx, old + trust * (a_proj - old))

    # 3. refinement: guided filter (colour guide) in the transition band, on its bounding crop; then despeckle
    if opts.refine_radius > 0:
        rad = opts.refine_radius
        # optional: strength following the canvas noise (refine_noise > 0); by default the refinement always
        # applies (it helps clean generated canvases too: it fits alpha to the local colour lines)
        wgt = (sigma / opts.refine_noise).clamp(0, 1) if opts.refine_noise > 0 else torch.ones_like(sigma)
        for i in range(b):
            if float(wgt[i]) <= 0:
                continue
            ai = a[i : i + 1]
            band, box_ = _transition_band(ai, rad)
            if box_ is None:
                continue
            y0, y1, x0, x1 = box_
            crop = img[i : i + 1, :, y0:y1, x0:x1]
            ac = ai[:, :, y0:y1, x0:x1]
            src = ac.contiguous()
            eps = opts.refine_eps + opts.refine_eps_noise * float(sigma[i]) ** 2
            if opts.refine_colour:
                # colour guide: alpha is locally affine in RGB wherever a window mixes the screen with one or two
                # foreground colours (the colour-line model of closed-form matting); a grey guide cannot separate
                # a foreground whose luminance equals the screen's
                fit_blur = opts.refine_fit_blur
                if fit_blur < 0:
                    fit_blur = 1 if subsampled[i] else 0
                ref = colour_guided_filter(crop, src, rad, eps, opts.refine_subsample, fit_blur)
                if high_quality:
                    # second, coarser scale (twice the window, coefficients on a grid twice as coarse): wider
                    # colour lines for wide soft regions; the two fits are averaged
                    coarse = colour_guided_filter(crop, src, 2 * rad, eps, 2 * opts.refine_subsample, fit_blur)
                    ref = 0.5 * (ref + coarse)
                ref = ref.clamp_(0, 1)
            else:
                luma = (crop * crop.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
                ref = guided_filter(luma, src, rad, eps, opts.refine_subsample).clamp_(0, 1)
            bc = band[y0:y1, x0:x1][None, None]
            bc = bc & (ac > 0)  # never raise what the keyer sees as pure canvas (no haze around hard edges)
            ac.copy_(torch.where(bc, ref if float(wgt[i]) >= 1 else ac + float(wgt[i]) * (ref - ac), ac))
    if opts.despeckle_area > 0 or opts.hole_area > 0:
        a = despeckle(a, max(8, int(round(opts.despeckle_area * h * w))) if opts.despeckle_area > 0 else 0,
                      int(round(opts.hole_area * h * w)))

    # 3b. a guide (a previous alpha of the object): kept where the image is still its composite over the screen,
    #     GreenPost's own key where the image changed (greenpost/guide.py)
    guide_w = None
    if guide is not None:
        guide = fit_guide(guide, img)
        change = guide_change(img, guide, key[:, :, None, None])  # against the flat key colour the canvas had
        if canvas_s is not None:
            # ... or against the local clean plate (a workflow that shaded the canvas); the plate under a subject
            # that covers most of the frame is a fill and may be off, so the image counts as unchanged where either
            # screen explains it (bench/roundtrip.py)
            change = torch.minimum(change, guide_change(img, guide, upsample(screen_grid, size)))
        a, guide_w = blend_guide(a, guide, change, sigma)

    # 4. a given matte wins; the keyer only cleans its canvas
    if given is not None:
        clean = (a <= 0.0) & (given < opts.canvas_clean)  # the keyer sees pure canvas and the matte is faint
        a = torch.where(clean, torch.zeros_like(given), given)

    # 5. unmix against the local screen where 0 < alpha < 1 (opaque pixels are their own colour; fully transparent
    #    ones keep the despilled image, which no compositing shows), then despill
    fg = img.clone()
    for i in range(b):
        flat_a = a[i, 0].reshape(-1)
        idx = ((flat_a > 0) & (flat_a < 1)).nonzero().squeeze(1)
        if idx.numel():
            ab = flat_a.index_select(0, idx)
            kk = at(screen_grid, i, idx) if canvas_s is not None else key[i][:, None]
            prior = at(fg_grid, i, idx)
            num = ab * (img[i].reshape(3, -1).index_select(1, idx) - (1.0 - ab) * kk) + opts.unmix_reg * prior
            fg[i].view(3, -1).index_copy_(1, idx, (num / (ab * ab + opts.unmix_reg)).clamp_(0, 1))
    undespilled = fg.clone() if guide_w is not None else None
    if opts.despill > 0 and opts.despill_limit == "max" and opts.luma_preserve == 0:
        # fast path of unmix.despill (same result): the key channels are lowered to the others' maximum, in place
        sp = key_difference(fg, high).clamp_min_(0)
        if opts.despill != 1.0:
            sp.mul_(opts.despill)
        rows = high.tolist()
        for i in range(b):
            for c in range(3):
                if rows[i][c]:
                    fg[i, c].sub_(sp[i, 0])
        fg.clamp_(0, 1)
    elif opts.despill > 0:
        fg, sp = despill(fg, high, opts.despill, opts.luma_preserve, opts.despill_limit)
    else:
        sp = torch.zeros_like(a)
    spill = (sp / d_k).clamp_(0, 1) * (a > 0).float()
    if undespilled is not None:
        # where the image is still the old object on its canvas its colours are the object's own, not spill
        fg = undespilled + guide_w * (fg - undespilled)
        spill = spill * guide_w

    # images without a usable key colour: defined, opaque result
    if not bool(usable.all()):
        keep = usable[:, None, None, None]
        a = torch.where(keep, a, given if given is not None else guide if guide is not None else torch.ones_like(a))
        fg = torch.where(keep, fg, img)
        spill = torch.where(keep, spill, torch.zeros_like(spill))

    return GreenPostResult(fg=fg.to(out_dtype), alpha=a.to(out_dtype), spill=spill.to(out_dtype),
                           key_colour=key.to(out_dtype), keys=keys, extras={"screen_grid": screen_grid, "canvas_noise": sigma,
                                                                       "guide_weight": guide_w})
