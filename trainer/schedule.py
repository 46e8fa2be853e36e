"""Learning-rate schedules of the trainers: torch's ``LambdaLR`` with a linear warm-up, then constant or cosine.

The schedule is a plain function (not stored in the scheduler's ``state_dict``), so a resumed run with more
``steps`` follows the new total; the step count itself is in the checkpoint (``scheduler.state_dict()``).
"""

from __future__ import annotations

import math

import torch

DECAYS = ("constant", "cosine")


def lr_factor(step: int, steps: int, warmup: int, decay: str = "cosine", floor: float = 0.05) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based) -> float in (0, 1].

    Warm-up: ``(step + 1) / warmup`` for the first ``warmup`` steps; then 1 (``constant``) or a half cosine from
    1 down to ``floor`` at ``steps`` (``cosine``)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0, decay: str = "cosine",
                 floor: float = 0.05) -> torch.optim.lr_scheduler.LambdaLR:
    """optimizer -> ``LambdaLR`` following :func:`lr_factor`; call ``.step()`` after every ``optimizer.step()``."""
    if decay not in DECAYS:
        raise ValueError(f"decay: expected one of {', '.join(DECAYS)}, got {decay!r}")
    for name, v in (("steps", steps), ("warmup", warmup)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor: expected a fraction in [0,1], got {floor!r}")

    def factor(step: int) -> float:
        return lr_factor(step, steps, warmup, decay, floor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def head_warmup(steps: int) -> int:
    """The head trainer's warm-up: a tenth of the run, at most 200 steps."""
    return min(200, steps // 10)
