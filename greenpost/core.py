"""GreenPost: key a (near-)green canvas image into straight foreground + alpha (+ spill map)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import torch

from ..common.checks import check_unit_range
from ..common.keycolour import (MIN_KEY_DOMINANCE, KeyColour, NoKeyColourWarning, key_channels, key_difference,
                                key_dominance, key_rgb, resolve_key_colours)
from .alpha import despeckle, key_points, ratio_to_alpha
from .band import upsample
from .fgmodel import apply_foreground_model, foreground_grid
from .guide import blend_guide, check_guide, fit_guide, guide_change
from .refine import band_box, chroma_subsampled, refine_alpha, transition_band
from .screen import canvas_noise, clean_plate, screen_difference
from .threads import keying_threads
from .unmix import despill, spill_map, unmix_pixels

MIN_SIDE = 8
# Peak working memory of green_post per input pixel (batch x height x width), above the input itself: measured on CPU
# (float32, OpenCV paths, default and high-quality mode alike) at 130-176 bytes per pixel for 1-9 Mpx; the larger
# figure is used. So 1 GB of free memory keys about 6 Mpx at a time (4K UHD: 1.3 GB, 8K UHD: 5.3 GB). Larger
# inputs are refused up front with the limit named (see check_memory) instead of failing deep inside.
KEYING_BYTES_PER_PIXEL = 176
_MEMORY_CHECK_FROM = 256 * 2**20  # smaller calls (about 1.5 Mpx) skip the probe


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


def address_space_left() -> int | None:
    """Bytes this process may still map under its RLIMIT_AS (``ulimit -v``), or None when there is no limit or it
    cannot be told (not POSIX, no /proc)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/status") as f:
            used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (ImportError, OSError, ValueError, StopIteration):
        return None
    return max(0, soft - used)


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


def memory_limit(device="cpu") -> tuple[int | None, str]:
    """-> (bytes a keying job on ``device`` may use now, or None when it cannot be told; the limit in words). On the
    CPU the smaller of the free memory and the address space left under ``ulimit -v`` (an image the free memory
    allows would otherwise fail with an allocation error in the middle of the keying: issue 19, K7 / X2)."""
    avail = available_memory(device)
    space = address_space_left() if torch.device(device).type == "cpu" else None
    if space is not None and (avail is None or space <= avail):
        return space, (f"{space / 1e9:.1f} GB of address space left under this process's limit (ulimit -v)")
    if avail is None:
        return None, ""
    return avail, f"{avail / 1e9:.1f} GB of free memory on {torch.device(device).type}"


def frames_that_fit(height: int, width: int, device="cpu", most: int = 64, share: float = 0.5) -> int:
    """-> how many ``height x width`` frames to key at a time on ``device``: ``share`` of what
    :func:`memory_limit` allows at :data:`KEYING_BYTES_PER_PIXEL`, at least 1, at most ``most`` (bounded latency
    between progress updates and interruption checks); ``most`` when the memory cannot be told."""
    room, _ = memory_limit(device)
    if room is None:
        return most
    return max(1, min(most, int(room * share) // max(1, KEYING_BYTES_PER_PIXEL * height * width)))


def check_memory(batch: int, height: int, width: int, device="cpu") -> None:
    """Refuse (``ValueError`` naming the size, the need and the limit) a keying job larger than the free memory
    (or the address space left): ``batch x height x width`` input pixels at :data:`KEYING_BYTES_PER_PIXEL` each."""
    pixels = batch * height * width
    need = pixels * KEYING_BYTES_PER_PIXEL
    if need < _MEMORY_CHECK_FROM:
        return
    avail, why = memory_limit(device)
    if avail is None or need <= avail:
        return
    fit = avail // KEYING_BYTES_PER_PIXEL
    side = int(math.sqrt(fit))
    frames = f"{batch} x " if batch > 1 else ""
    raise ValueError(f"image: {frames}{width}x{height} px ({pixels / 1e6:.1f} Mpx) needs about {need / 1e9:.1f} GB to "
                     f"key ({KEYING_BYTES_PER_PIXEL} bytes per pixel) but only {why} is there: at most about "
                     f"{fit / 1e6:.0f} Mpx fit now (e.g. {side}x{side}); downscale or crop it"
                     + (", or key fewer frames at a time" if batch > 1 else ""))


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

    Runs on the image's device, the whole batch at once (a few host syncs per batch, none per image). On the CPU the
    ops run single-threaded and a batch is split into one part per allowed thread, keyed side by side
    (``greenpost.threads``: no collapse beside other work); the user's thread settings are restored after.
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
    with torch.no_grad(), keying_threads(image.device) as workers:
        img = image.float().contiguous()  # one copy of a permuted view (e.g. from HWC) makes every later pass cheaper
        keys = resolve_key_colours(key_colour, img, share=opts.share_key)
        b = img.shape[0]
        parts = min(workers, b)
        if parts <= 1:
            return _green_post(img, keys, given, grey, high_quality, opts, out_dtype, guide)
        bounds = [b * i // parts for i in range(parts + 1)]

        def part(i):
            lo, hi = bounds[i], bounds[i + 1]
            return _green_post(img[lo:hi], keys[lo:hi], None if given is None else given[lo:hi], grey, high_quality,
                               opts, out_dtype, None if guide is None else guide[lo:hi] if guide.shape[0] > 1 else guide)

        import contextvars
        from concurrent.futures import ThreadPoolExecutor

        contexts = [contextvars.copy_context() for _ in range(parts)]  # copies of the caller's context: scoped
        with ThreadPoolExecutor(parts, thread_name_prefix="greenpost") as pool:  # switches (band.opencv_paths) hold
            results = list(pool.map(lambda i: contexts[i].run(part, i), range(parts)))  # in the workers too
        return _concat(results)


def _concat(results: list[GreenPostResult]) -> GreenPostResult:
    """Results of consecutive parts of a batch -> one result."""
    def cat(name):
        values = [r.extras[name] for r in results]
        return None if any(v is None for v in values) else torch.cat(values)

    return GreenPostResult(fg=torch.cat([r.fg for r in results]), alpha=torch.cat([r.alpha for r in results]),
                           spill=torch.cat([r.spill for r in results]),
                           key_colour=torch.cat([r.key_colour for r in results]),
                           keys=[k for r in results for k in r.keys],
                           extras={"screen_grid": cat("screen_grid"), "canvas_noise": cat("canvas_noise"),
                                   "guide_weight": cat("guide_weight")})


def _green_post(img: torch.Tensor, keys: list[KeyColour], given, grey: bool, high_quality: bool,
                opts: GreenPostOptions, out_dtype, guide=None) -> GreenPostResult:
    """The composition of the stages on one batch: img [B,3,H,W] float32 contiguous in [0,1], B KeyColours."""
    b, _, h, w = img.shape
    size = (h, w)
    key_host = key_rgb(keys, b)  # [B,3] on the CPU: key channels and usability are read there (no device sync)
    key = key_host.to(img.device)
    high = key_channels(key_host)
    usable = (key_dominance(key_host) >= MIN_KEY_DOMINANCE) & torch.tensor([k.found for k in keys])
    if grey:
        usable = torch.zeros_like(usable)  # no key colour -> opaque result

    # 1. screen colour: local clean plate on a coarse grid (statistics at reduced resolution), or the flat key
    if opts.local_screen:
        screen_grid, canvas_s, s = clean_plate(img, key, high, opts.screen_cells, opts.screen_trend)
    else:
        screen_grid, canvas_s, s = key[:, :, None, None], None, 1
    d_k = screen_difference(screen_grid, high, size)
    r = key_difference(img, high).div_(d_k)  # difference ratio: 1 on the screen, <= 0 on a non-key foreground
    sigma = canvas_noise(r[..., ::s, ::s], canvas_s) if canvas_s is not None else canvas_noise(r, None)  # [B]
    black, white = key_points(sigma, opts.black, opts.white, opts.noise_black, opts.noise_white)

    # 2. alpha: colour difference. JPEG / video chroma (high-quality mode) is judged once per image on its
    #    transition band
    a = ratio_to_alpha(r, black, white, opts.gamma)
    subsampled = None
    if high_quality and opts.refine_radius > 0:
        band = transition_band(a, opts.refine_radius)
        box = band_box(band, opts.refine_radius)
        if box is not None:
            y0, y1, x0, x1 = box
            subsampled = chroma_subsampled(img[..., y0:y1, x0:x1], band[..., y0:y1, x0:x1])

    # 3. local foreground colour (feeds the model and the unmixing prior); where it is known and the pixel lies on
    #    the line between the screen and that colour, the exact projection onto that line
    fg_grid, region, so = foreground_grid(img, key_difference(screen_grid, high).clamp_min(0.05), high, sigma, black,
                                          white, opts.gamma, opts.fg_cells, opts.fg_opaque, opts.fg_erode,
                                          opts.fg_local_min, opts.fg_model_reach)
    screen = upsample(screen_grid, size) if canvas_s is not None else screen_grid
    fg_local = upsample(fg_grid, size)
    if opts.fg_model:
        tol = torch.full((b,), opts.fg_model_tol, device=img.device)
        if subsampled is not None:
            tol = torch.where(subsampled, opts.fg_model_tol_subsampled, tol)
        scalar = (dict(weight=opts.fg_scalar, angle=opts.fg_scalar_angle, lo=opts.fg_scalar_lo, hi=opts.fg_scalar_hi)
                  if opts.fg_scalar > 0 else None)
        apply_foreground_model(a, img, r, region, so, screen, fg_local, high, black, white, tol, opts.gamma, scalar)

    # 4. refinement: guided filter (colour guide) in the transition band; then despeckle
    if opts.refine_radius > 0:
        # optional: strength following the canvas noise (refine_noise > 0); by default the refinement always
        # applies (it helps clean generated canvases too: it fits alpha to the local colour lines)
        strength = (sigma / opts.refine_noise).clamp(0, 1) if opts.refine_noise > 0 else torch.ones_like(sigma)
        refine_alpha(a, img, sigma, opts.refine_radius, opts.refine_eps, opts.refine_eps_noise, opts.refine_subsample,
                     opts.refine_colour, opts.refine_fit_blur, subsampled, high_quality, strength)
    if opts.despeckle_area > 0 or opts.hole_area > 0:
        a = despeckle(a, max(8, int(round(opts.despeckle_area * h * w))) if opts.despeckle_area > 0 else 0,
                      int(round(opts.hole_area * h * w)))

    # 4b. a guide (a previous alpha of the object): kept where the image is still its composite over the screen,
    #     GreenPost's own key where the image changed (greenpost/guide.py)
    guide_w = None
    if guide is not None:
        guide = fit_guide(guide, img)
        change = guide_change(img, guide, key[:, :, None, None])  # against the flat key colour the canvas had
        if canvas_s is not None:
            # ... or against the local clean plate (a workflow that shaded the canvas); the plate under a subject
            # that covers most of the frame is a fill and may be off, so the image counts as unchanged where either
            # screen explains it (bench/roundtrip.py)
            change = torch.minimum(change, guide_change(img, guide, screen))
        a, guide_w = blend_guide(a, guide, change, sigma)

    # 4c. a given matte wins; the keyer only cleans its canvas
    if given is not None:
        clean = (a <= 0.0) & (given < opts.canvas_clean)  # the keyer sees pure canvas and the matte is faint
        a = torch.where(clean, torch.zeros_like(given), given).contiguous()

    # 5. unmix against the local screen where 0 < alpha < 1, then despill
    fg = img.clone()
    unmix_pixels(fg, img, a, screen, fg_local, opts.unmix_reg)
    if opts.despill > 0:
        despilled, sp = despill(fg, high, opts.despill, opts.luma_preserve, opts.despill_limit)
    else:
        despilled, sp = fg, torch.zeros_like(a)
    spill = spill_map(sp, d_k, a)
    if guide_w is not None:
        # where the image is still the old object on its canvas its colours are the object's own, not spill
        despilled = fg + guide_w * (despilled - fg)
        spill = spill * guide_w
    fg = despilled

    # images without a usable key colour: defined, opaque result
    if not bool(usable.all()):
        keep = usable.to(img.device)[:, None, None, None]
        a = torch.where(keep, a, given if given is not None else guide if guide is not None else torch.ones_like(a))
        fg = torch.where(keep, fg, img)
        spill = torch.where(keep, spill, torch.zeros_like(spill))

    return GreenPostResult(fg=fg.to(out_dtype), alpha=a.to(out_dtype), spill=spill.to(out_dtype),
                           key_colour=key.to(out_dtype), keys=keys,
                           extras={"screen_grid": screen_grid, "canvas_noise": sigma, "guide_weight": guide_w})
