"""Procedural synthetic mattes: textured foregrounds with soft edges, hair-like strands and semi-transparency.

``synthetic_matte(size, seed) -> (fg [3,H,W], alpha [1,H,W])`` is deterministic per ``(size, seed)`` and is used
as extra training data (trainer, matting head) and in tests.
"""

from .mattes import synthetic_batch, synthetic_matte, write_synthetic_folder

__all__ = ["synthetic_matte", "synthetic_batch", "write_synthetic_folder"]
