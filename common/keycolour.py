"""The key colour: one value type, one resolver, one estimator and one colour-difference primitive for the pack.

A :class:`KeyColour` is the colour a canvas is keyed against: its sRGB triple in [0, 1], how it was obtained (a
preset, a hex string, an RGB triple, estimated from an image, or the default when estimation found no key-colour
screen), its dominant channels and its colour word. It travels between nodes on the ``DIFFUMATTING_KEY_COLOUR``
socket: GreenControl outputs the colour it anchored the canvas to, and MattingHeadDecode, GreenPost and
SaveMattingDataset key against that very colour.

The colour difference of a pixel against a key generalises the Vlahos ``G - max(R, B)``: the key's "high" channels
(above the key's own mean) minus its "low" channels, ``min(high) - max(low)``. For green that is
``G - max(R, B)``, for blue ``B - max(R, G)``, for magenta ``min(R, B) - G``.
"""

from __future__ import annotations

import colorsys
import re
import warnings
from dataclasses import dataclass

import torch

from .keypresets import AUTO, KEY_PRESETS, PRESET_ALIASES, PRESET_HELP, PRESET_LABELS

__all__ = ["KeyColour", "KEY_PRESETS", "PRESET_ALIASES", "PRESET_LABELS", "PRESET_HELP", "AUTO",
           "NoKeyColourWarning", "parse_key_colour", "estimate_key_colours", "estimate_key_colours_from_pixels",
           "resolve_key_colours", "expand_key_colours", "key_rgb", "key_channels", "key_difference", "key_dominance",
           "colour_word", "colour_to_hex", "DEFAULT_KEY", "MIN_KEY_DOMINANCE"]

DEFAULT_KEY = (40 / 255.0, 180 / 255.0, 70 / 255.0)  # the typical chroma green of a lit screen / a generator canvas
MIN_KEY_DOMINANCE = 0.1  # a key colour whose difference measure is below this is not a usable key
# "Is there a key screen at all?" (auto estimation only; a given colour is always keyed against). A screen is a
# saturated green, blue or magenta (HSV hue ranges in degrees below), clearly coloured (its own colour difference at
# least MIN_SCREEN_DOMINANCE, about half of a lit chroma screen's 0.43) and visible on the image border (at least
# MIN_SCREEN_BORDER of the border pixels within 0.12 of it). Anything else (objects on grey / white / black, a
# photo on its own background, a red or orange "key") is "no key colour": NoKeyColourWarning and an opaque result,
# never an inverted matte. Set on the development mattes (../shared/data/mattes): composited over green, blue or
# magenta, every subject whose canvas shows on >= 15 % of the border is recognised at full and at an eighth of the
# size (lowest: dominance 0.28, HSV saturation 0.69, border 0.14); of the 43 photos on their own backgrounds, 41
# give no key (the other two have a saturated blue sky behind the subject, keyed as a blue screen: the subject stays
# opaque). A photo with a little sky in a corner (5 % of the border) stays below MIN_SCREEN_BORDER.
SCREEN_HUES = {"green": (75.0, 165.0), "blue": (185.0, 255.0), "magenta": (275.0, 335.0)}
MIN_SCREEN_DOMINANCE = 0.2
MIN_SCREEN_SATURATION = 0.6
MIN_SCREEN_BORDER = 0.07
# Colour words by hue (degrees): the word a prompt names the canvas with and the attention is recorded for.
_WORD_HUES = {"red": 0.0, "orange": 30.0, "yellow": 60.0, "green": 120.0, "cyan": 180.0, "blue": 225.0,
              "purple": 270.0, "magenta": 300.0}
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


class NoKeyColourWarning(UserWarning):
    """The image shows no recognisable key colour; the caller falls back to a defined result."""


def colour_to_hex(rgb) -> str:
    """``[3]`` float in [0, 1] (tensor or sequence) or a KeyColour -> ``#rrggbb``."""
    rgb = rgb.rgb if isinstance(rgb, KeyColour) else rgb
    vals = torch.as_tensor(rgb, dtype=torch.float32).detach().flatten().clamp(0, 1)
    return "#" + "".join(f"{v:02x}" for v in (vals * 255).round().to(torch.int64).tolist())


def colour_word(rgb) -> str:
    """``[3]`` float in [0, 1] -> the colour word whose hue is nearest ("green", "blue", "magenta", "red", ...)."""
    h, _, _ = colorsys.rgb_to_hsv(*(float(v) for v in torch.as_tensor(rgb, dtype=torch.float32).flatten().tolist()))
    hue = h * 360.0

    def dist(a: float) -> float:
        d = abs(hue - a) % 360.0
        return min(d, 360.0 - d)

    return min(_WORD_HUES, key=lambda w: dist(_WORD_HUES[w]))


@dataclass(frozen=True)
class KeyColour:
    """One key colour. ``rgb`` sRGB in [0, 1]; ``source`` one of "preset", "hex", "rgb", "estimated", "default"
    ("default": estimation found no key-colour screen and this is :data:`DEFAULT_KEY`); ``preset`` its id."""

    rgb: tuple[float, float, float]
    source: str = "rgb"
    preset: str | None = None

    def __post_init__(self):
        rgb = tuple(float(v) for v in self.rgb)
        if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
            raise ValueError(f"key_colour: expected three values in [0, 1], got {self.rgb!r}")
        object.__setattr__(self, "rgb", rgb)

    @property
    def found(self) -> bool:
        """False when this is the fallback of an estimate that found no key-colour screen."""
        return self.source != "default"

    @property
    def hex(self) -> str:
        return colour_to_hex(self.rgb)

    @property
    def word(self) -> str:
        return colour_word(self.rgb)

    @property
    def high(self) -> tuple[bool, bool, bool]:
        """The dominant channels (``key_channels`` of this colour)."""
        return tuple(bool(v) for v in key_channels(self.tensor()[None])[0].tolist())

    @property
    def usable(self) -> bool:
        """Far enough from grey to key against (its own colour difference >= MIN_KEY_DOMINANCE)."""
        return float(key_dominance(self.tensor()[None])[0]) >= MIN_KEY_DOMINANCE

    @property
    def label(self) -> str:
        """Human-readable: "chroma green #00B140", "estimated #28B446", "#00FF00"."""
        if self.preset:
            return PRESET_LABELS[self.preset]
        return f"{self.source} {self.hex.upper()}" if self.source in ("estimated", "default") else self.hex.upper()

    def tensor(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """-> ``[3]`` in [0, 1]."""
        return torch.tensor(self.rgb, dtype=dtype, device=device)

    def __str__(self) -> str:
        return self.label


def parse_key_colour(value, name: str = "key_colour") -> KeyColour:
    """Preset id or label ("chroma_green", "chroma green #00B140"), alias ("green"), ``#RRGGBB``/``#RGB``, an RGB
    triple (0..1 floats or 0..255 ints; also as text "R,G,B") or a KeyColour -> KeyColour. ``ValueError`` naming
    ``name`` otherwise ("auto" is not a colour: see :func:`resolve_key_colours`)."""
    if isinstance(value, KeyColour):
        return value
    if isinstance(value, str) and "," in value:
        parts = value.split(",")
        try:
            value = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"{name}: expected a preset, #RRGGBB or R,G,B, got {value!r}") from None
    if isinstance(value, torch.Tensor):
        if value.numel() != 3:
            raise ValueError(f"{name}: expected three numbers (R, G, B), got a tensor of shape {tuple(value.shape)}")
        value = value.detach().flatten().tolist()
    if isinstance(value, (tuple, list)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name}: expected three numbers (R, G, B), got {value!r}")
        vals = [float(v) for v in value]
        if not all(v == v and abs(v) != float("inf") for v in vals):
            raise ValueError(f"{name}: RGB values must be finite, got {value!r}")
        if any(v > 1.0 for v in vals):
            if any(v < 0 or v > 255 for v in vals):
                raise ValueError(f"{name}: RGB values must be in 0..1 or 0..255, got {value!r}")
            vals = [v / 255.0 for v in vals]
        if any(v < 0 for v in vals):
            raise ValueError(f"{name}: RGB values must be non-negative, got {value!r}")
        return KeyColour(tuple(vals), "rgb")
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a preset name, a hex colour or an RGB triple, got {type(value).__name__}")
    text = value.strip().lower()
    preset = PRESET_ALIASES.get(text, text)
    by_label = {label.lower(): p for p, label in PRESET_LABELS.items()}
    preset = by_label.get(preset, preset)
    if preset in KEY_PRESETS:
        return KeyColour(tuple(v / 255.0 for v in KEY_PRESETS[preset]), "preset", preset)
    match = _HEX.match(text)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return KeyColour(tuple(int(digits[i: i + 2], 16) / 255.0 for i in (0, 2, 4)), "hex")
    if text == AUTO:
        raise ValueError(f"{name}: 'auto' needs an image to estimate the key colour from")
    presets = ", ".join([*KEY_PRESETS, *PRESET_ALIASES])
    raise ValueError(f"{name}: {value!r} is not a preset ({presets}) nor a hex colour like #00FF00")


# ------------------------------------------------------------------------------------------------ tensor primitives


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
    """image: [B,3,...] float (e.g. [B,3,H,W], [B,3], [1,3,N]), high: [B,3] or [1,3] bool -> [B,1,...]
    ``min(high) - max(low)``. Keep ``high`` on the CPU (it comes from host key colours): reading it then costs no
    device sync."""
    rows = high.tolist() if high.device.type == "cpu" else None  # host rows: no ops, no sync
    if rows is not None and all(row == rows[0] for row in rows):
        return _difference(image, rows[0])
    if rows is None and (high.shape[0] == 1 or bool((high == high[:1]).all())):
        return _difference(image, high[0].tolist())
    # key colours with different dominant channels in one batch: masked min / max, the same values in one pass
    m = high.to(image.device).view(high.shape[0], 3, *([1] * (image.ndim - 2)))
    top = torch.where(m, image, torch.inf).amin(dim=1, keepdim=True)
    low = torch.where(m, -torch.inf, image).amax(dim=1, keepdim=True)
    return torch.where(m.all(dim=1, keepdim=True), torch.zeros_like(top), top - low)


def _difference(image: torch.Tensor, row: list) -> torch.Tensor:
    hi = [c for c in range(3) if row[c]]
    lo = [c for c in range(3) if not row[c]]
    top = image[:, hi[0]: hi[0] + 1]
    for c in hi[1:]:
        top = torch.minimum(top, image[:, c: c + 1])
    if not lo:
        return top - top
    low = image[:, lo[0]: lo[0] + 1]
    for c in lo[1:]:
        low = torch.maximum(low, image[:, c: c + 1])
    return top - low


def key_dominance(key: torch.Tensor) -> torch.Tensor:
    """key: [B,3] float in [0,1] -> [B] the key's own colour difference (how far it is from grey)."""
    return key_difference(key, key_channels(key))[:, 0]


def as_key_colour(value) -> KeyColour | None:
    """``value`` as this module's :class:`KeyColour`, or None when it is not one. A KeyColour of the pack's other
    import (``diffumatting.common.keycolour`` vs the copy ComfyUI imports under the pack's folder name: same class,
    other identity; hostile X19) is recognised by its class name and fields and converted (its values checked)."""
    if isinstance(value, KeyColour):
        return value
    if type(value).__name__ == "KeyColour" and all(hasattr(value, a) for a in ("rgb", "source", "preset")):
        try:
            return KeyColour(tuple(value.rgb), value.source, value.preset)
        except (TypeError, ValueError):
            return None
    return None


def expand_key_colours(value, batch: int, name: str = "key_colour") -> list[KeyColour]:
    """A KeyColour, a list of 1 or ``batch`` of them, a ``[1,3]``/``[batch,3]`` tensor in [0,1] or anything
    :func:`parse_key_colour` reads -> ``batch`` KeyColours ("auto" is refused: it needs an image)."""
    if isinstance(value, torch.Tensor) and value.ndim == 2:
        if value.shape not in ((batch, 3), (1, 3)):
            raise ValueError(f"{name}: expected [3] or [B,3] with B={batch}, got {tuple(value.shape)}")
        if not torch.isfinite(value).all() or value.min() < 0 or value.max() > 1:
            raise ValueError(f"{name}: tensor values must be finite and in [0, 1]")
        keys = [KeyColour(tuple(row), "rgb") for row in value.float().tolist()]
    elif isinstance(value, (list, tuple)) and value and all(as_key_colour(k) is not None for k in value):
        keys = [as_key_colour(k) for k in value]
    else:
        keys = [as_key_colour(value) or parse_key_colour(value, name)]
    if len(keys) not in (1, batch):
        wanted = "1 key colour" if batch == 1 else f"1 or {batch} key colours"
        raise ValueError(f"{name}: expected {wanted} for a batch of {batch}, got {len(keys)}")
    return keys * batch if len(keys) == 1 else keys


def key_rgb(keys, batch: int, device=None, name: str = "key_colour") -> torch.Tensor:
    """Anything :func:`expand_key_colours` reads -> ``[batch,3]`` float32 in [0,1] on ``device``."""
    return torch.tensor([k.rgb for k in expand_key_colours(keys, batch, name)], dtype=torch.float32, device=device)


# ------------------------------------------------------------------------------------------------ estimation


def _estimate_batch(image: torch.Tensor, max_samples: int = 20_000) -> tuple[torch.Tensor, list[bool]]:
    """image: [B,3,H,W] float in [0,1] -> (keys [B,3] on the CPU, recognised per image). The whole batch in one
    pass (a few host syncs per batch, none per image)."""
    # a regular subsample of the frame (strided view, no full-resolution pass)
    st = max(1, int((image.shape[2] * image.shape[3] / max_samples) ** 0.5))
    img = image[:, :, ::st, ::st]
    b, _, h, w = img.shape
    pix = img.reshape(b, 3, -1)
    # Border frame (8 % of each side): the canvas is most reliably visible there.
    bh, bw = max(1, h * 8 // 100), max(1, w * 8 // 100)
    frame = torch.cat([img[:, :, :bh].reshape(b, 3, -1), img[:, :, -bh:].reshape(b, 3, -1),
                       img[:, :, :, :bw].reshape(b, 3, -1), img[:, :, :, -bw:].reshape(b, 3, -1)], dim=2)
    return _estimate(frame[:, :, :: max(1, frame.shape[2] // max_samples)], pix)


def _estimate(frame: torch.Tensor, pix: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    """frame: [B,3,N] pixels where the canvas shows best, pix: [B,3,M] all pixels, in [0,1] -> (keys [B,3] on the
    CPU, recognised per image): the border's candidate if it is a screen, else the whole image's."""
    b = frame.shape[0]
    candidates = [_estimate_from(source, pix) for source in (frame, pix)]  # the border first, then the whole image
    keys = torch.stack([c[0] for c in candidates])  # [2,B,3]
    border = torch.stack([((frame - c[0][:, :, None]).abs().amax(dim=1) < 0.12).float().mean(dim=1)
                          for c in candidates])  # [2,B] share of the border near the candidate
    plausible = torch.stack([c[1] for c in candidates])  # [2,B]
    stats = torch.cat([keys.clamp(0, 1), border[..., None], plausible[..., None].float()], dim=2).cpu()  # one transfer
    dominance = key_dominance(stats[..., :3].reshape(-1, 3)).view(2, b).tolist()
    stats = stats.tolist()
    out, found = [], []
    for i in range(b):
        for j in range(2):
            rgb, share, ok = stats[j][i][:3], stats[j][i][3], stats[j][i][4] > 0
            if ok and _is_screen(rgb, dominance[j][i], share):
                out.append(rgb)
                found.append(True)
                break
        else:
            out.append(list(DEFAULT_KEY))
            found.append(False)
    return torch.tensor(out, dtype=torch.float32), found


def _estimate_from(source: torch.Tensor, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """source: [B,3,N] pixels where the canvas should show, pix: [B,3,M] all pixels, in [0,1] -> (candidate key
    [B,3], plausible [B] bool: enough saturated pixels and enough of them in the mode's hue bins).

    The hue-histogram (36 bins) mode of the saturated pixels, among the screen hues (a large orange subject does not
    outvote a green screen's bins); the median colour of the pixels in the mode's bins, refined on the whole image
    as the median of the pixels close to it (robust to a gentle gradient)."""
    mx, mn = source.amax(dim=1), source.amin(dim=1)
    sat = (mx - mn) > 0.2  # [B,N]
    r, g, b = source.unbind(dim=1)
    delta = (mx - mn).clamp_min(1e-6)
    hue = torch.where(mx == r, ((g - b) / delta) % 6, torch.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
    bins = (hue / 6 * 36).long().clamp(0, 35)
    hist = torch.zeros(source.shape[0], 36, device=source.device).scatter_add_(1, bins, sat.float())
    hist = hist + 0.5 * (hist.roll(1, dims=1) + hist.roll(-1, dims=1))
    mode = torch.where(_SCREEN_BINS.to(hist.device), hist, torch.full_like(hist, -1.0)).argmax(dim=1)
    near = (bins - mode[:, None] + 36) % 36
    sel = sat & ((near <= 1) | (near >= 35))
    plausible = (sat.float().mean(dim=1) >= 0.2) & (sel.float().mean(dim=1) >= 0.15)
    key = torch.where(sel[:, None], source, torch.nan).nanmedian(dim=2).values  # [B,3]
    close = (pix - key[:, :, None]).abs().amax(dim=1) < 0.12  # [B,M]
    refined = torch.where(close[:, None], pix, torch.nan).nanmedian(dim=2).values
    key = torch.where((close.sum(dim=1) > 64)[:, None], refined, key)
    return torch.nan_to_num(key, nan=0.0), plausible


def _in_screen_hues(hue_deg: float) -> bool:
    return any(lo <= hue_deg <= hi for lo, hi in SCREEN_HUES.values())


# the 36 hue-histogram bins whose centre lies in a screen hue range
_SCREEN_BINS = torch.tensor([_in_screen_hues((i + 0.5) * 10.0) for i in range(36)])


def _is_screen(rgb: list[float], dominance: float, border: float) -> bool:
    """rgb: a candidate key in [0,1], its own colour difference (key_dominance) and the share of the border pixels
    within 0.12 of it -> whether it is a key-colour screen seen on the border."""
    h, sat, _ = colorsys.rgb_to_hsv(*rgb)
    if not (_in_screen_hues(h * 360.0) and sat >= MIN_SCREEN_SATURATION):
        return False
    if dominance < max(MIN_SCREEN_DOMINANCE, MIN_KEY_DOMINANCE):
        return False
    return border >= MIN_SCREEN_BORDER


def _keys(rgbs: torch.Tensor, found: list[bool], warn: bool) -> list[KeyColour]:
    """rgbs [B,3] (CPU), found per image -> B KeyColours ("estimated" / "default"), warning for each not found."""
    keys = []
    for i, (rgb, ok) in enumerate(zip(rgbs, found)):
        if not ok and warn:
            warnings.warn(f"image {i}: no recognisable key colour (no green, blue or magenta screen on its border); "
                          "the result is opaque (pass key_colour to key against a given colour)", NoKeyColourWarning,
                          stacklevel=3)
        keys.append(KeyColour(tuple(rgb.clamp(0, 1).tolist()), "estimated" if ok else "default"))
    return keys


def estimate_key_colours(image: torch.Tensor, warn: bool = True) -> list[KeyColour]:
    """image: [B,3,H,W] float in [0,1] -> B KeyColours (the dominant saturated canvas colour of each image).

    Robust to a gentle lighting gradient and to a subject covering most of the frame (the hue-histogram mode, among
    the screen hues, of the saturated border pixels, then of the whole image). Only a key-colour screen counts
    (green, blue or magenta, saturated, seen on the border: see :data:`SCREEN_HUES`); an image without one (objects
    on grey, white or black, a photo on its own background) gets ``source="default"`` (:data:`DEFAULT_KEY`) and a
    :class:`NoKeyColourWarning`, and GreenPost then returns its opaque result. Any other colour can still be keyed
    against by passing it explicitly.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    return _keys(*_estimate_batch(image.float()), warn)


def estimate_key_colours_from_pixels(pixels: torch.Tensor, warn: bool = True, max_samples: int = 20_000
                                     ) -> list[KeyColour]:
    """pixels: [B,3,N] float in [0,1] (e.g. an image's border ring) -> B KeyColours: the same estimate as
    :func:`estimate_key_colours`, on a pixel set where the canvas is expected to show."""
    if pixels.ndim != 3 or pixels.shape[1] != 3 or pixels.shape[2] == 0:
        raise ValueError(f"pixels: expected [B,3,N] with N > 0, got {tuple(pixels.shape)}")
    px = pixels.float()[:, :, :: max(1, pixels.shape[2] // max_samples)]
    return _keys(*_estimate(px, px), warn)


def resolve_key_colours(value, image: torch.Tensor, share: bool = False, name: str = "key_colour") -> list[KeyColour]:
    """"auto" / preset / hex / triple / KeyColour / list of KeyColours / ``[B,3]`` tensor, + image [B,3,H,W] -> B
    KeyColours. ``share=True`` with "auto" uses one colour for the whole batch (the median of the frames whose
    estimate found a screen): stable for video. A key too close to grey warns (the keyed result is opaque)."""
    b = image.shape[0]
    if isinstance(value, str) and value.strip().lower() == AUTO:
        keys = estimate_key_colours(image, warn=True)
        if share and b > 1:
            found = [k for k in keys if k.found]
            if found:
                rgb = torch.tensor([k.rgb for k in found]).median(dim=0).values
                keys = [KeyColour(tuple(rgb.tolist()), "estimated")] * b
    else:
        keys = expand_key_colours(value, b, name)
    found = [k for k in keys if k.found]  # usability of all keys in one computation (not a property per key)
    weak = [k for k, d in zip(found, key_dominance(key_rgb(found, len(found))).tolist()) if d < MIN_KEY_DOMINANCE] if found else []
    if weak:
        warnings.warn(f"{name}: {weak[0].hex} is too close to grey to key against; the result is all opaque",
                      NoKeyColourWarning, stacklevel=2)
    return keys
