"""The one DiffuMatting training toolkit and the two loops on top of it.

Toolkit (pure torch): ``checkpoint`` (model + optimizer + scheduler + RNG state in one atomic safetensors file),
``schedule`` (torch LR schedulers: warm-up + constant/cosine), ``seeding`` (every draw a function of (seed, keys)),
``pairs`` (the one (fg|image, alpha) folder loader), ``augment`` (the kornia colour jitter, key-colour canvases,
crops), ``losses`` (the paper's joint loss). Loops: ``loop`` (the green-canvas LoRA on ComfyUI's UNet; drives
ComfyUI's model code, loaded at run time through ``comfy_bootstrap``, never imported here at module import time),
``head`` (the matting head on a frozen decoder), ``data`` (the LoRA's Green100K-style samples), ``head_eval``.
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
