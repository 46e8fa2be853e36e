"""Green control at sampling time: colour-word attention mask, x0 anchoring towards the key-colour latent, the key
latent, the prompt template and the per-run recorder.

Pure torch; the ComfyUI wiring lives in ``nodes/green_control.py``; the trainer uses the same prompt, tokens,
attention and key latent.
"""

from .anchor import anchor_x0, flat_key_image, key_latent, strength_schedule
from .attention import cross_attention_probs, expand_token_ids
from .mask import aggregate_attention, background_mask, normalize_per_image, soft_threshold, x0_prior
from .prompt import DEFAULT_NEGATIVE_SUFFIX, DEFAULT_SUFFIX, build_negative, build_prompt, key_suffix, names_word
from .recorder import RECORD_LEVELS, GreenSettings, RunLog, RunState, unet_attn2_lookup
from .tokens import find_word_positions, suffix_word_positions

__all__ = [
    "cross_attention_probs",
    "expand_token_ids",
    "aggregate_attention",
    "background_mask",
    "normalize_per_image",
    "soft_threshold",
    "x0_prior",
    "anchor_x0",
    "strength_schedule",
    "flat_key_image",
    "key_latent",
    "DEFAULT_SUFFIX",
    "DEFAULT_NEGATIVE_SUFFIX",
    "build_prompt",
    "build_negative",
    "key_suffix",
    "names_word",
    "RECORD_LEVELS",
    "GreenSettings",
    "RunState",
    "RunLog",
    "unet_attn2_lookup",
    "find_word_positions",
    "suffix_word_positions",
]
