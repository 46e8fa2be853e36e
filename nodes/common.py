"""Shared helpers of the ComfyUI layer: categories, the custom socket types, device and progress plumbing."""

from __future__ import annotations

import torch
from comfy_api.latest import io

NODE_PREFIX = "DiffuMatting"
CATEGORY = "DiffuMatting"

# A loaded matting head (see matting_head/); produced by DiffuMattingLoader, consumed by MattingHeadDecode.
MattingHead = io.Custom("DIFFUMATTING_HEAD")
# The key colour a canvas was painted / keyed with: a tuple of common.keycolour.KeyColour, one for the whole batch or
# one per image. GreenControl(Sampler) output the colour they anchored to; MattingHeadDecode, GreenPost and
# SaveMattingDataset take it as an optional input ("key") that wins over their own key-colour widget, and output the
# colours they keyed with. DiffuMattingKeyColour makes one from a preset, a hex colour or an image.
KeyColourSocket = io.Custom("DIFFUMATTING_KEY_COLOUR")
CUSTOM_HEX = "custom hex"


def key_colour_options(auto: bool = True, custom: bool = True) -> list[str]:
    """The key-colour combo: ["auto"], the presets as they say what they are ("chroma green #00B140"),
    ["custom hex"]."""
    from ..common.keypresets import AUTO, PRESET_LABELS

    return [AUTO] * auto + list(PRESET_LABELS.values()) + [CUSTOM_HEX] * custom


def preset_label(preset: str) -> str:
    from ..common.keypresets import PRESET_LABELS

    return PRESET_LABELS[preset]


def check_key_widget(value, auto: bool = True, custom: bool = True, name: str = "key_colour") -> bool | str:
    """``validate_inputs`` for a key-colour combo: any option, and what older workflows stored there (a preset id or
    alias such as "green", a hex colour) -> True, or the error message."""
    from ..common.keycolour import AUTO, parse_key_colour

    if value is None or value in key_colour_options(auto, custom):  # None: the widget is linked
        return True
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return True if auto else f"{name}: 'auto' is not possible here; pick a preset"
    try:
        parse_key_colour(value, name)
    except ValueError as exc:
        return str(exc)
    return True


def widget_key(value: str, hex_value: str | None = None, name: str = "key_colour"):
    """A key-colour widget (+ its hex field) -> a KeyColour, or "auto"."""
    from ..common.keycolour import AUTO, parse_key_colour

    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if value == CUSTOM_HEX:
        return parse_key_colour(hex_value or "", "key_hex")
    return parse_key_colour(value, name)


def socket_keys(value, batch: int, name: str = "key") -> list:
    """What came in on a key-colour socket -> ``batch`` KeyColours (one for all images, or one per image)."""
    from ..common.keycolour import as_key_colour, expand_key_colours

    # as_key_colour: also a KeyColour of the pack's other import (`import diffumatting` in a script or another
    # pack; hostile X19), converted
    one = as_key_colour(value)
    keys = [one] if one is not None else list(value) if isinstance(value, (list, tuple)) else None
    if not keys:
        raise ValueError(f"{name}: expected a key colour (DIFFUMATTING_KEY_COLOUR), got {type(value).__name__}")
    converted = [as_key_colour(k) for k in keys]
    bad = next((k for k, c in zip(keys, converted) if c is None), None)
    if any(c is None for c in converted):
        raise ValueError(f"{name}: expected a key colour (DIFFUMATTING_KEY_COLOUR) or a list of them, got a "
                         f"{type(value).__name__} holding a {type(bad).__name__}")
    return expand_key_colours(converted, batch, name)


def key_socket_input(tooltip: str):
    return KeyColourSocket.Input("key", optional=True, tooltip=tooltip)


def key_socket_output(tooltip: str):
    return KeyColourSocket.Output("key", display_name="key", tooltip=tooltip)


def key_summary(keys) -> str:
    """KeyColours -> one short line for a preview ("chroma green #00B140", or "2 key colours: ...")."""
    labels = list(dict.fromkeys(k.label for k in keys))
    return labels[0] if len(labels) == 1 else f"{len(labels)} key colours: " + ", ".join(labels[:4])


def category(sub: str) -> str:
    """``DiffuMatting/<sub>``: every node of the pack lives under the DiffuMatting menu."""
    return f"{CATEGORY}/{sub}"


def intermediate_device():
    import comfy.model_management as mm

    return mm.intermediate_device()


def compute_device():
    import comfy.model_management as mm

    return mm.get_torch_device()


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel (call it in long loops)."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def progress_bar(total: int, node_id: str | None = None):
    import comfy.utils

    return comfy.utils.ProgressBar(total, node_id=node_id)


def image_to_bchw(image: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] -> [B,C,H,W] float32 (C = 3 or 4)."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE [B,H,W,3] (or RGBA [B,H,W,4]), got {shape}")
    return image.movedim(-1, 1).float()


def mask_to_b1hw(mask: torch.Tensor, name: str) -> torch.Tensor:
    """ComfyUI MASK [B,H,W] or [H,W] -> [B,1,H,W] float32."""
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name}: expected a MASK [B,H,W], got {shape}")
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()


def to_image(x: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] -> ComfyUI IMAGE [B,H,W,C] float32 on the intermediate device."""
    return x.movedim(1, -1).contiguous().float().to(intermediate_device())


def to_mask(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] -> ComfyUI MASK [B,H,W] float32 on the intermediate device."""
    return x[:, 0].contiguous().float().to(intermediate_device())
