"""Green control at sampling time: green-token attention mask, x0 anchoring towards the key-colour latent.

Pure torch; the ComfyUI wiring lives in ``nodes/green_control.py``.
"""

from .attention import cross_attention_probs, expand_token_ids
from .mask import aggregate_attention, background_mask, normalize_per_image, soft_threshold, x0_prior

__all__ = [
    "cross_attention_probs",
    "expand_token_ids",
    "aggregate_attention",
    "background_mask",
    "normalize_per_image",
    "soft_threshold",
    "x0_prior",
]
