"""Choose a key colour for an object: the candidate canvas colour farthest from the object's own colours.

Putting an existing transparent object on a flat key-colour canvas (the round trip: canvas -> any image workflow ->
GreenPost with the old alpha as guide) works only if the object does not look like its canvas: a green frog on a
green canvas is keyed away. :func:`key_costs` scores each candidate key against the object's straight colours,
weighted by coverage (alpha), and :func:`choose_key_colours` picks the cheapest, preferring the first candidate
(chroma green, the colour the rest of the pack is tuned for) unless another is clearly better.

Cost of a key K for one object pixel of colour F (both in [0, 1]):
- ``keyable``: F's colour difference against K relative to K's own, ``d_K(F) / d_K(K)`` clamped to [0, 1]: the
  fraction of the pixel a colour-difference keyer would take for canvas (1 = keyed away entirely);
- ``near``: ``exp(-|F - K|^2 / (2 s^2))`` with s = :data:`NEAR_SIGMA`: colour proximity (spill, an edge that mixes
  the two can no longer be told apart), which also separates keys that no pixel is keyable against (a green
  object on blue or on magenta: magenta is farther).
The object's cost is ``sum(alpha * (keyable + NEAR_WEIGHT * near)) / sum(alpha)``.
"""

from __future__ import annotations

import colorsys

import torch

from .keycolour import SCREEN_HUES, KeyColour, key_channels, key_difference, key_dominance, parse_key_colour

__all__ = ["DEFAULT_CANDIDATES", "HUE_STEP", "NEAR_SIGMA", "NEAR_WEIGHT", "PREFER_MARGIN", "hue_candidates",
           "candidate_keys", "key_costs", "choose_key_colours"]

# The presets auto picks from, in order of preference: one per screen hue (the chroma variants are the lit-screen
# paints GreenPost's defaults were set on; the pure primaries key the same hue).
DEFAULT_CANDIDATES = ("chroma_green", "magenta", "chroma_blue")
HUE_STEP = 15.0  # degrees between the "any hue" candidates
NEAR_SIGMA = 0.2  # colour distance (RGB, 0..1) at which a pixel stops counting as "near" the key
NEAR_WEIGHT = 0.5  # weight of proximity against keyability
# The first candidate is kept unless another costs at least this much less (a fraction of the object's coverage):
# a grey, red or blue object costs nearly nothing on green, and green stays the key everything else is tuned for.
PREFER_MARGIN = 0.03


def hue_candidates(step: float = HUE_STEP) -> list[KeyColour]:
    """-> saturated key colours (S = V = 1) every ``step`` degrees inside the screen hues GreenPost recognises
    (green, blue and magenta ranges of ``common.keycolour.SCREEN_HUES``), green first."""
    if not 1.0 <= step <= 120.0:
        raise ValueError(f"step: expected 1..120 degrees, got {step}")
    out = []
    for lo, hi in SCREEN_HUES.values():  # green, blue, magenta
        hue = lo + (((hi - lo) % step) / 2.0)
        while hue <= hi + 1e-9:
            out.append(KeyColour(colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0), "rgb"))
            hue += step
    centre = 120.0  # the hue of a green screen: put the green nearest it first (the preferred key)
    greens = [k for k in out if SCREEN_HUES["green"][0] <= _hue(k) <= SCREEN_HUES["green"][1]]
    first = min(greens, key=lambda k: abs(_hue(k) - centre))
    return [first] + [k for k in out if k is not first]


def _hue(key: KeyColour) -> float:
    return colorsys.rgb_to_hsv(*key.rgb)[0] * 360.0


def candidate_keys(candidates=None) -> list[KeyColour]:
    """None (the presets of :data:`DEFAULT_CANDIDATES`), "hues" (:func:`hue_candidates`) or a sequence of anything
    ``parse_key_colour`` reads -> KeyColours, in order of preference; ``ValueError`` for an empty list or a key too
    close to grey to key against."""
    if candidates is None:
        candidates = DEFAULT_CANDIDATES
    elif isinstance(candidates, str):
        if candidates.strip().lower() != "hues":
            raise ValueError(f"candidates: expected None, 'hues' or a list of key colours, got {candidates!r}")
        return hue_candidates()
    keys = [parse_key_colour(c, "candidates") for c in candidates]
    if not keys:
        raise ValueError("candidates: expected at least one key colour")
    for k in keys:
        if not k.usable:
            raise ValueError(f"candidates: {k.label} is too close to grey to key against")
    return keys


def _check(fg: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(fg, torch.Tensor) or fg.ndim != 4 or fg.shape[1] != 3 or fg.shape[0] == 0:
        shape = tuple(fg.shape) if isinstance(fg, torch.Tensor) else type(fg).__name__
        raise ValueError(f"fg: expected [B,3,H,W] straight colour in [0,1], got {shape}")
    if not isinstance(alpha, torch.Tensor) or alpha.ndim != 4 or alpha.shape[1] != 1 \
            or alpha.shape[-2:] != fg.shape[-2:] or alpha.shape[0] not in (1, fg.shape[0]):
        shape = tuple(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
        raise ValueError(f"alpha: expected [B,1,H,W] matching fg {tuple(fg.shape)} (1 = opaque), got {shape}")
    if not (torch.isfinite(fg).all() and torch.isfinite(alpha).all()):
        raise ValueError("fg/alpha: contain NaN or infinite values")
    return fg.float().clamp(0, 1), alpha.float().clamp(0, 1).expand(fg.shape[0], 1, *fg.shape[-2:])


def key_costs(fg: torch.Tensor, alpha: torch.Tensor, candidates=None, max_samples: int = 65_536) -> torch.Tensor:
    """fg [B,3,H,W] straight colour in [0,1], alpha [B,1,H,W] (1 = opaque) -> [B,K] cost of each candidate key
    (:func:`candidate_keys`) in [0, 1 + NEAR_WEIGHT]: 0 = nothing of the object resembles the key; an object with
    no coverage costs 0 everywhere. Read on a regular subsample of at most ``max_samples`` pixels per image."""
    fg, alpha = _check(fg, alpha)
    keys = candidate_keys(candidates)
    b = fg.shape[0]
    step = max(1, int((fg.shape[-2] * fg.shape[-1] / max_samples) ** 0.5))
    f = fg[..., ::step, ::step].reshape(b, 3, -1)  # [B,3,N]
    w = alpha[..., ::step, ::step].reshape(b, -1)  # [B,N]
    mass = w.sum(dim=1).clamp_min(1e-6)
    out = []
    for k in keys:
        kt = k.tensor(fg.device)[None]  # [1,3]
        high = key_channels(kt).expand(b, 3)
        keyable = (key_difference(f[..., None], high)[:, 0, :, 0] / key_dominance(kt).clamp_min(1e-6)).clamp(0, 1)
        near = torch.exp(-((f - kt[..., None]) ** 2).sum(dim=1) / (2 * NEAR_SIGMA ** 2))
        out.append(((keyable + NEAR_WEIGHT * near) * w).sum(dim=1) / mass)
    return torch.stack(out, dim=1)


def choose_key_colours(fg: torch.Tensor, alpha: torch.Tensor, candidates=None, share: bool = False
                       ) -> list[KeyColour]:
    """fg [B,3,H,W] straight colour in [0,1], alpha [B,1,H,W] (1 = opaque) -> B KeyColours: per object the cheapest
    candidate of :func:`key_costs`, the first candidate kept unless another is cheaper by :data:`PREFER_MARGIN`.
    ``share=True``: one key for the whole batch (costs weighted by each object's coverage; stable for video)."""
    fg, alpha = _check(fg, alpha)
    keys = candidate_keys(candidates)
    costs = key_costs(fg, alpha, keys)  # [B,K]
    if share:
        mass = alpha.flatten(1).mean(dim=1)
        costs = ((costs * mass[:, None]).sum(dim=0) / mass.sum().clamp_min(1e-9))[None].expand(fg.shape[0], -1)
    picks = []
    for row in costs:
        best = int(row.argmin())
        picks.append(keys[0] if float(row[0]) <= float(row[best]) + PREFER_MARGIN else keys[best])
    return picks
