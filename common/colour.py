"""Key colours: names, presets and hex strings to linear-free sRGB triples in [0, 1]."""

from __future__ import annotations

import re

import torch

# Presets a user can pick in the nodes and the CLI. "green"/"blue" are the classic chroma-key screen colours;
# "pure_green" is the exact #00FF00 the generator's canvas is anchored to.
KEY_PRESETS: dict[str, tuple[int, int, int]] = {
    "green": (0, 177, 64),
    "pure_green": (0, 255, 0),
    "blue": (0, 71, 187),
    "pure_blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}

_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


def parse_key_colour(value: str | tuple | list | torch.Tensor, name: str = "key_colour") -> torch.Tensor:
    """Preset name, ``#RRGGBB``/``#RGB`` hex, or an RGB triple (0..1 floats or 0..255 ints) -> ``[3]`` float in [0, 1].

    Raises ``ValueError`` naming ``name`` and the accepted forms for anything else.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    if isinstance(value, (tuple, list)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(f"{name}: expected three numbers (R, G, B), got {value!r}")
        vals = [float(v) for v in value]
        if any(v > 1.0 for v in vals):
            if any(v < 0 or v > 255 for v in vals):
                raise ValueError(f"{name}: RGB values must be in 0..1 or 0..255, got {value!r}")
            vals = [v / 255.0 for v in vals]
        if any(v < 0 for v in vals):
            raise ValueError(f"{name}: RGB values must be non-negative, got {value!r}")
        return torch.tensor(vals, dtype=torch.float32)
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a preset name, a hex colour or an RGB triple, got {type(value).__name__}")
    text = value.strip().lower()
    if text in KEY_PRESETS:
        return torch.tensor(KEY_PRESETS[text], dtype=torch.float32) / 255.0
    match = _HEX.match(text)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        rgb = [int(digits[i : i + 2], 16) for i in (0, 2, 4)]
        return torch.tensor(rgb, dtype=torch.float32) / 255.0
    presets = ", ".join(sorted(KEY_PRESETS))
    raise ValueError(f"{name}: {value!r} is not a preset ({presets}) nor a hex colour like #00FF00")


def colour_to_hex(rgb: torch.Tensor) -> str:
    """``[3]`` float in [0, 1] -> ``#rrggbb``."""
    vals = (rgb.detach().float().clamp(0, 1) * 255).round().to(torch.int64).tolist()
    return "#" + "".join(f"{v:02x}" for v in vals)
