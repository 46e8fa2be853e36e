"""Key colour: robust estimation from the canvas, resolution of user choices, and the colour-difference measure.

The colour difference of a pixel against a key colour generalises the Vlahos ``G - max(R, B)``: the key's
"high" channels (above the key's own mean) minus its "low" channels, ``min(high) - max(low)``. For green that is
``G - max(R, B)``, for blue ``B - max(R, G)``, for magenta ``min(R, B) - G``.
"""

from __future__ import annotations

import warnings

import torch

from ..common.colour import parse_key_colour

DEFAULT_KEY = (40 / 255.0, 180 / 255.0, 70 / 255.0)  # the typical chroma green of a lit screen / a generator canvas
MIN_KEY_DOMINANCE = 0.1  # a key colour whose difference measure is below this is not a usable key


class NoKeyColourWarning(UserWarning):
    """The image shows no recognisable key colour; GreenPost falls back to a defined result."""


def key_channels(key: torch.Tensor) -> torch.Tensor:
    """key: [B,3] float in [0,1] -> high: [B,3] bool (True for the key's dominant channels)."""
    mean = key.mean(dim=1, keepdim=True)
    high = key > mean + 1e-6
    none = ~high.any(dim=1)
    if none.any():  # a grey key: call the largest channel (green on ties) "high" so the maths stays defined
        idx = torch.where(key[:, 1:2] >= key.max(dim=1, keepdim=True).values, 1, key.argmax(dim=1, keepdim=True))
        fallback = torch.zeros_like(high).scatter_(1, idx, True)
        high = torch.where(none[:, None], fallback, high)
    return high


def key_difference(image: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """image: [B,3,H,W] (or [B,3]) float, high: [B,3] bool -> [B,1,H,W] (or [B,1]) ``min(high) - max(low)``."""
    rows = high.tolist()
    if all(row == rows[0] for row in rows):
        return _difference(image, rows[0])
    return torch.cat([_difference(image[i : i + 1], row) for i, row in enumerate(rows)])


def _difference(image: torch.Tensor, row: list) -> torch.Tensor:
    hi = [c for c in range(3) if row[c]]
    lo = [c for c in range(3) if not row[c]]
    top = image[:, hi[0] : hi[0] + 1]
    for c in hi[1:]:
        top = torch.minimum(top, image[:, c : c + 1])
    if not lo:
        return top - top
    low = image[:, lo[0] : lo[0] + 1]
    for c in lo[1:]:
        low = torch.maximum(low, image[:, c : c + 1])
    return top - low


def key_dominance(key: torch.Tensor) -> torch.Tensor:
    """key: [B,3] float in [0,1] -> [B] the key's own colour difference (how far it is from grey)."""
    return key_difference(key, key_channels(key))[:, 0]


def _estimate_one(img: torch.Tensor, max_samples: int = 20_000) -> tuple[torch.Tensor, bool]:
    """img: [3,H,W] float in [0,1] -> (key [3], recognised: bool)."""
    # a regular subsample of the frame (strided view, no full-resolution pass)
    st = max(1, int((img.shape[1] * img.shape[2] / max_samples) ** 0.5))
    img = img[:, ::st, ::st]
    _, h, w = img.shape
    pix = img.reshape(3, -1)
    # Border frame (8 % of each side): the canvas is most reliably visible there.
    bh, bw = max(1, h * 8 // 100), max(1, w * 8 // 100)
    frame = torch.cat([img[:, :bh].reshape(3, -1), img[:, -bh:].reshape(3, -1),
                       img[:, :, :bw].reshape(3, -1), img[:, :, -bw:].reshape(3, -1)], dim=1)
    frame = frame[:, :: max(1, frame.shape[1] // max_samples)]
    for source in (frame, pix):
        mx, mn = source.max(dim=0).values, source.min(dim=0).values
        chroma = mx - mn
        sat = chroma > 0.2
        if sat.float().mean() < 0.2:
            continue
        cand = source[:, sat]
        # Hue histogram (36 bins) of the saturated pixels; the mode is the screen.
        r, g, b = cand
        cmax, cmin = cand.max(dim=0).values, cand.min(dim=0).values
        delta = (cmax - cmin).clamp_min(1e-6)
        hue = torch.where(cmax == r, ((g - b) / delta) % 6, torch.where(cmax == g, (b - r) / delta + 2, (r - g) / delta + 4))
        bins = (hue / 6 * 36).long().clamp(0, 35)
        hist = torch.bincount(bins, minlength=36).float()
        hist = hist + 0.5 * (hist.roll(1) + hist.roll(-1))
        mode = int(hist.argmax())
        near = ((bins - mode + 36) % 36).clamp(max=36) 
        sel = (near <= 1) | (near >= 35)
        if sel.float().mean() * sat.float().mean() < 0.15:
            continue
        key = cand[:, sel].median(dim=1).values
        # Refine on the whole image: pixels close to that colour (robust to a gentle gradient).
        dist = (pix - key[:, None]).abs().amax(dim=0)
        close = dist < 0.12
        if close.sum() > 64:
            key = pix[:, close].median(dim=1).values
        if float(key_dominance(key[None])[0]) >= MIN_KEY_DOMINANCE:
            return key, True
    return torch.tensor(DEFAULT_KEY, dtype=img.dtype, device=img.device), False


def estimate_key_colour(image: torch.Tensor, warn: bool = True, return_found: bool = False):
    """image: [B,3,H,W] float in [0,1] -> key: [B,3] float in [0,1] (dominant saturated canvas colour).

    Robust to a gentle lighting gradient and to a subject covering most of the frame (the hue-histogram mode of
    the saturated border pixels, then of the whole image). An image with no recognisable key colour gets the
    default chroma green and a :class:`NoKeyColourWarning` (``return_found=True`` also returns a [B] bool).
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    keys, found = [], []
    for i, img in enumerate(image.float()):
        key, ok = _estimate_one(img)
        found.append(ok)
        if not ok and warn:
            warnings.warn(f"image {i}: no recognisable key colour (no dominant saturated canvas colour); "
                          "the result is opaque (pass key_colour to key against a given colour)", NoKeyColourWarning,
                          stacklevel=2)
        keys.append(key)
    keys = torch.stack(keys).to(image.dtype)
    if return_found:
        return keys, torch.tensor(found, device=image.device)
    return keys


def resolve_key_colour(key_colour, image: torch.Tensor, share: bool = False, return_found: bool = False):
    """``"auto"`` / preset / hex / ``[3]`` / ``[B,3]`` + image [B,3,H,W] -> key [B,3] float in [0,1] on image's device.

    ``share=True`` uses one colour for the whole batch (the median of the per-frame estimates): stable for video.
    ``return_found=True`` also returns a [B] bool: False where "auto" found no key colour on the image.
    """
    b = image.shape[0]
    found = torch.ones(b, dtype=torch.bool, device=image.device)
    if isinstance(key_colour, str) and key_colour.strip().lower() == "auto":
        key, found = estimate_key_colour(image, warn=True, return_found=True)
        key = key.float()
        if share and b > 1:
            if found.any():
                key = key[found].median(dim=0).values[None].expand(b, 3)
                found = found.any().expand(b)
    elif isinstance(key_colour, torch.Tensor) and key_colour.ndim == 2:
        if key_colour.shape not in ((b, 3), (1, 3)):
            raise ValueError(f"key_colour: expected [3] or [B,3] with B={b}, got {tuple(key_colour.shape)}")
        key = key_colour.float().expand(b, 3)
        if key.min() < 0 or key.max() > 1:
            raise ValueError("key_colour: tensor values must be in [0, 1]")
    else:
        key = parse_key_colour(key_colour, name="key_colour")[None].expand(b, 3)
    key = key.to(device=image.device, dtype=torch.float32).contiguous()
    weak = key_dominance(key) < MIN_KEY_DOMINANCE
    if weak.any():
        warnings.warn(f"key_colour: {key[weak][0].tolist()} is too close to grey to key against; "
                      "the result is all opaque", NoKeyColourWarning, stacklevel=2)
    if return_found:
        return key, found.to(image.device)
    return key
