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
# SaveMattingDataset take it as an optional input that wins over their own key-colour widget.
KeyColourSocket = io.Custom("DIFFUMATTING_KEY_COLOUR")


def category(sub: str) -> str:
    """``DiffuMatting/<sub>``: every node of the pack lives under the DiffuMatting menu."""
    return f"{CATEGORY}/{sub}"


def intermediate_device():
    import comfy.model_management as mm

    return mm.intermediate_device()


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
