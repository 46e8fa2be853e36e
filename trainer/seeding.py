"""The one seeding scheme of the trainers: every random draw is a pure function of (run seed, keys).

``sample_seed(seed, *keys)`` hashes the run seed and any keys (a sample index, a step, a stream name) into a
63-bit seed; neighbouring keys give unrelated streams, and a value never depends on how many processes, workers
or resumes came before. ``sample_generator`` wraps it in a ``torch.Generator``; ``uniform``/``randint``/``chance``
draw Python numbers from such a generator.
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(seed: int, *keys) -> int:
    """(run seed, keys...) -> int in [0, 2**63): a hash, so neighbouring keys give unrelated streams."""
    text = ":".join(str(k) for k in (int(seed), *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def sample_generator(seed: int, *keys, device: str | torch.device = "cpu") -> torch.Generator:
    """(run seed, keys...) -> a ``torch.Generator`` seeded with :func:`sample_seed` (e.g. keys = sample index)."""
    return torch.Generator(device=device).manual_seed(sample_seed(seed, *keys))


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    """A float drawn uniformly from [lo, hi) with ``g``."""
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An int drawn uniformly from [lo, hi] (both ends included) with ``g``."""
    return int(torch.randint(int(lo), int(hi) + 1, (1,), generator=g))


def chance(g: torch.Generator, p: float) -> bool:
    """True with probability ``p`` (one draw from ``g``, also when p is 0 or 1, so streams stay aligned)."""
    return torch.rand(1, generator=g).item() < p
