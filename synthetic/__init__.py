"""The one procedural matte generator: textured foregrounds with soft edges, hair-like strands, semi-transparency
(family ``"shapes"``) and dense fine structure such as feathers and dandelion tufts (family ``"fine"``).

``synthetic_matte(size, seed, family="shapes") -> (fg [3,H,W], alpha [1,H,W])`` is deterministic per
``(size, seed, family)`` and is used as extra training data (LoRA trainer, head trainer), by benchmarks and tests.
"""

from .mattes import FAMILIES, synthetic_batch, synthetic_matte, write_synthetic_folder

__all__ = ["FAMILIES", "synthetic_matte", "synthetic_batch", "write_synthetic_folder"]
