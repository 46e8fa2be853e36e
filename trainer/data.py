"""Green100K-style training data: (fg or image, alpha[, caption]) pairs composited onto the key colour.

Pairs come from :mod:`trainer.pairs` (the one pair loader; folder layouts there) or from memory. A caption comes
from the sidecar text file, else from the folder name (``red_apples`` -> "red apples"); the fixed prompt suffix
(``green_control.prompt.DEFAULT_SUFFIX``, "isolated on a plain green screen background"; ``train`` puts the key
colour's word in it with ``green_control.prompt.key_suffix``) is appended, and with probability
``caption_dropout`` the caption is empty (classifier-free guidance). A straight foreground is preferred over an
original image when both exist.

Each sample is augmented (subject scale and position on the canvas, horizontal/vertical flips, the kornia colour
jitter of :mod:`trainer.augment`), composited over the key colour with the one composite
(``compositing.alpha_over``) and returned with its background mask and transition band at latent size. Every draw
is a function of ``(seed, epoch, index, attempt)`` through :func:`trainer.seeding.sample_generator`. Unreadable
files, size mismatches and empty alphas are skipped (the next sample is used) and counted in
:attr:`GreenDataset.skipped`, reported in the log; they never raise.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..green_control.prompt import DEFAULT_SUFFIX, build_prompt, names_word  # noqa: F401 (one prompt builder)
from .augment import ColourJitter, over
from .losses import background_mask, transition_band
from .pairs import IMAGE_EXTS, Sample, clean_folder_caption, load_pair, read_caption, scan_folder  # noqa: F401
from .seeding import chance, randint, sample_generator, uniform

log = logging.getLogger("diffumatting.trainer")


@dataclass
class DataOptions:
    """How samples are built. ``resolution`` must be a multiple of 8 (the latent factor)."""

    resolution: int = 512
    key_colour: object = "chroma_green"  # the CLI's and GreenControl's default; a KeyColour, preset, hex or RGB triple (common.keycolour.parse_key_colour)
    scale: tuple = (0.5, 0.95)  # subject's longer side as a fraction of the canvas
    hflip: float = 0.5
    vflip: float = 0.0
    jitter: float = 0.1  # colour-jitter strength (brightness, contrast, saturation; hue at a fifth)
    caption_suffix: str = DEFAULT_SUFFIX
    caption_dropout: float = 0.1
    default_caption: str = "an object"
    band_radius: int | None = None  # pixels; None = 10 px at 512, scaled with the resolution
    factor: int = 8
    max_retries: int = 20
    cache_items: int = 64  # decoded sources kept in memory (cropped to the subject, at most `resolution` px)

    def __post_init__(self) -> None:
        if not isinstance(self.resolution, int) or self.resolution < 64 or self.resolution % self.factor:
            raise ValueError(f"resolution: expected an int >= 64 divisible by {self.factor}, got {self.resolution!r}")
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise ValueError(f"scale: expected 0.05 <= min <= max <= 1, got {self.scale!r}")
        for name in ("hflip", "vflip", "caption_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0,1], got {v!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter: expected a strength in [0,1], got {self.jitter!r}")
        if self.band_radius is None:
            self.band_radius = max(1, round(10 * self.resolution / 512))
        elif isinstance(self.band_radius, bool) or not isinstance(self.band_radius, int) or self.band_radius < 0:
            raise ValueError(f"band_radius: expected an int >= 0 (pixels), got {self.band_radius!r}")


def _crop_to_subject(rgb: torch.Tensor, alpha: torch.Tensor, max_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [3,H,W], alpha [1,H,W] -> both cropped to alpha's bounding box, area-downscaled to <= max_side px."""
    ys, xs = torch.nonzero(alpha[0] > 0.01, as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    rgb, alpha = rgb[:, y0:y1, x0:x1], alpha[:, y0:y1, x0:x1]
    h, w = alpha.shape[1:]
    if max(h, w) > max_side:
        k = max_side / max(h, w)
        both = F.interpolate(torch.cat([rgb, alpha])[None], size=(max(1, round(h * k)), max(1, round(w * k))), mode="area")[0]
        rgb, alpha = both[:3], both[3:]
    return rgb.contiguous(), alpha.contiguous()


def place_on_canvas(
    rgb: torch.Tensor, alpha: torch.Tensor, opts: DataOptions, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [3,H,W], alpha [1,H,W] -> (fg [3,S,S], alpha [1,S,S]) with S = resolution: the subject's bounding box,
    scaled so its longer side is a random fraction of S, flipped, placed at a random position (inside the canvas
    when it fits). The fg outside the source is filled with edge colours (invisible under alpha 0)."""
    s = opts.resolution
    ys, xs = torch.nonzero(alpha[0] > 0.01, as_tuple=True)
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    rgb, alpha = rgb[:, y0:y1, x0:x1], alpha[:, y0:y1, x0:x1]
    h, w = alpha.shape[1:]
    frac = uniform(g, *opts.scale)
    k = frac * s / max(h, w)
    nh, nw = max(1, round(h * k)), max(1, round(w * k))
    both = torch.cat([rgb, alpha], 0)[None]
    mode = "area" if k < 1 else "bilinear"
    both = F.interpolate(both, size=(nh, nw), mode=mode, **({} if mode == "area" else {"align_corners": False}))[0]
    if chance(g, opts.hflip):
        both = both.flip(-1)
    if chance(g, opts.vflip):
        both = both.flip(-2)
    top = randint(g, 0, s - nh) if nh <= s else -randint(g, 0, nh - s)
    left = randint(g, 0, s - nw) if nw <= s else -randint(g, 0, nw - s)
    canvas = torch.zeros(4, s, s)
    sy0, sx0 = max(0, -top), max(0, -left)
    dy0, dx0 = max(0, top), max(0, left)
    hh, ww = min(nh - sy0, s - dy0), min(nw - sx0, s - dx0)
    canvas[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = both[:, sy0 : sy0 + hh, sx0 : sx0 + ww]
    fg = canvas[:3]
    # fill the fg outside the pasted box with its mean colour so colour stats stay sane (alpha is 0 there)
    inside = torch.zeros(1, s, s, dtype=torch.bool)
    inside[:, dy0 : dy0 + hh, dx0 : dx0 + ww] = True
    fg = torch.where(inside, fg, both[:3].mean(dim=(1, 2), keepdim=True))
    return fg.clamp(0, 1), canvas[3:].clamp(0, 1)


class GreenDataset(torch.utils.data.Dataset):
    """Green composites of a folder's (fg|image, alpha) pairs, or of in-memory pairs, with augmentation.

    Item: ``{"image": [3,S,S] in [0,1], "alpha": [1,S,S], "trimap": [1,S,S] in {0,.5,1}, "bg": [1,S/8,S/8],
    "band": [1,S/8,S/8], "prompt": str, "has_key_word": bool, "index": int}``. Bad sources are skipped: the item
    falls through to the next index and the reason is counted in :attr:`skipped`.
    """

    def __init__(self, sources, options: DataOptions | None = None, seed: int = 0):
        self.opts = options or DataOptions()
        from ..common.keycolour import parse_key_colour

        self.key_colour = parse_key_colour(self.opts.key_colour, "key_colour")  # the canvas colour (a KeyColour)
        self.key = self.key_colour.tensor()  # [3] in [0,1]
        self.jitter = ColourJitter.strength(self.opts.jitter)
        if isinstance(sources, (str, os.PathLike)):
            self.samples: list = scan_folder(sources)
        else:
            self.samples = list(sources)
            if not self.samples:
                raise ValueError("sources: expected at least one (fg, alpha[, caption]) pair or sample, got none")
        self.seed = int(seed)
        self.epoch = 0  # the training loop sets it; augmentation is a function of (seed, epoch, index)
        self.skipped: Counter = Counter()
        self._bad: set[int] = set()
        self._logged: set[int] = set()
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, i: int):
        if i in self._cache:
            return self._cache[i]
        rgb, alpha, caption = self._read(i)
        rgb, alpha = _crop_to_subject(rgb, alpha, self.opts.resolution)
        if self.opts.cache_items > 0:
            if len(self._cache) >= self.opts.cache_items:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = (rgb, alpha, caption)
        return rgb, alpha, caption

    def _read(self, i: int):
        s = self.samples[i]
        if isinstance(s, Sample):
            rgb, alpha = load_pair(s)
            return rgb, alpha, read_caption(s, self.opts.default_caption)
        fg, alpha = s[0], s[1]
        caption = s[2] if len(s) > 2 and s[2] is not None else self.opts.default_caption
        if fg.ndim != 3 or fg.shape[0] != 3 or alpha.ndim != 3 or alpha.shape[0] != 1:
            raise ValueError(f"sample {i}: expected fg [3,H,W] and alpha [1,H,W], got {tuple(fg.shape)}, {tuple(alpha.shape)}")
        if fg.shape[1:] != alpha.shape[1:]:
            raise ValueError(f"sample {i}: fg {tuple(fg.shape[1:])} and alpha {tuple(alpha.shape[1:])} differ in size")
        if not (alpha > 0.01).any():
            raise ValueError(f"sample {i}: alpha is empty (no foreground)")
        return fg.float().clamp(0, 1), alpha.float().clamp(0, 1), caption

    def _skip(self, i: int, exc: Exception) -> None:
        msg = str(exc)
        reason = "empty alpha" if "empty" in msg else "size mismatch" if "match" in msg or "differ" in msg else "unreadable"
        self._bad.add(i)
        if i not in self._logged:
            self._logged.add(i)
            self.skipped[reason] += 1
            log.warning("skipping sample %d (%s): %s", i, reason, msg)

    def build(self, i: int, g: torch.Generator) -> dict:
        """Sample ``i`` (no fall-through) with augmentation drawn from ``g`` -> item dict (see class doc)."""
        rgb, alpha, caption = self._source(i)
        fg, a = place_on_canvas(rgb, alpha, self.opts, g)
        fg = self.jitter(fg, g)
        image = over(fg, a, self.key)
        drop = chance(g, self.opts.caption_dropout)
        prompt = "" if drop else build_prompt(caption, self.opts.caption_suffix)
        trimap = torch.where(a > 1 - 1 / 255, 1.0, torch.where(a < 1 / 255, 0.0, 0.5))
        bg = background_mask(a[None], self.opts.factor)[0]
        band = transition_band(a[None], self.opts.band_radius, self.opts.factor)[0]
        return {
            "image": image,
            "alpha": a,
            "fg": fg,
            "trimap": trimap,
            "bg": bg,
            "band": band,
            "prompt": prompt,
            "has_key_word": not drop and bool(prompt),
            "index": i,
        }

    def __getitem__(self, index: int) -> dict:
        n = len(self.samples)
        for attempt in range(min(n, self.opts.max_retries)):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            g = sample_generator(self.seed, "augment", self.epoch, index, attempt)
            try:
                return self.build(i, g)
            except (ValueError, OSError) as exc:
                self._skip(i, exc)
        raise ValueError(
            f"data: no usable sample near index {index}: {sum(self.skipped.values())} skipped "
            f"({dict(self.skipped)}); check the data folder"
        )

    def report(self) -> str:
        """One line: how many samples were skipped and why."""
        total = sum(self.skipped.values())
        if not total:
            return f"data: {len(self.samples)} samples, none skipped"
        return f"data: {len(self.samples)} samples, {total} skipped ({', '.join(f'{k}: {v}' for k, v in sorted(self.skipped.items()))})"


def collate(items: list[dict]) -> dict:
    """Items of :class:`GreenDataset` -> batch: tensors stacked to [B,...], ``prompt`` a list, flags a bool tensor."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(vals)
        elif k == "has_key_word":
            out[k] = torch.tensor(vals, dtype=torch.bool)
        elif k == "index":
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out
