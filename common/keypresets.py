"""The key-colour presets, torch-free (for help texts and widget lists built before torch is imported).

:mod:`common.keycolour` re-exports all of it; everything else should import from there.
"""

from __future__ import annotations

# Presets a user can pick in the nodes and the CLI, by id. Chroma green/blue are the classic lit-screen paints;
# the pure ones the exact primaries. Aliases keep older workflows and commands working.
KEY_PRESETS: dict[str, tuple[int, int, int]] = {
    "chroma_green": (0, 177, 64),
    "pure_green": (0, 255, 0),
    "chroma_blue": (0, 71, 187),
    "pure_blue": (0, 0, 255),
    "magenta": (255, 0, 255),
}
PRESET_ALIASES = {"green": "chroma_green", "blue": "chroma_blue"}
AUTO = "auto"


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02X}" for v in rgb)


# What a combo widget shows for each preset: it says what the colour is ("chroma green #00B140").
PRESET_LABELS: dict[str, str] = {p: f"{p.replace('_', ' ')} {_hex(v)}" for p, v in KEY_PRESETS.items()}
# The presets for a help text or tooltip: "chroma_green (#00B140), pure_green (#00FF00), ...".
PRESET_HELP = ", ".join(f"{p} ({_hex(v)})" for p, v in KEY_PRESETS.items())
