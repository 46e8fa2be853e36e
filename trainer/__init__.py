"""The standalone DiffuMatting trainer: the paper's joint losses, a Green100K-style data builder and a LoRA loop.

``losses`` and ``data`` are pure torch; ``loop``/``lora`` drive ComfyUI's own model code, loaded
at run time (``COMFYUI_PATH``, through ``comfy_bootstrap``), never imported at module import time here.
"""

from .data import DataOptions, GreenDataset, collate, scan_folder
from .losses import (
    LossWeights,
    attention_green_loss,
    background_mask,
    canvas_green_loss,
    diffusion_loss,
    joint_loss,
    transition_band,
    transition_boundary_loss,
)

__all__ = [
    "DataOptions",
    "GreenDataset",
    "collate",
    "scan_folder",
    "LossWeights",
    "attention_green_loss",
    "background_mask",
    "canvas_green_loss",
    "diffusion_loss",
    "joint_loss",
    "transition_band",
    "transition_boundary_loss",
]
