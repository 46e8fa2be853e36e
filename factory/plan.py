"""The factory's plan: sample ``i`` is prompt ``i mod P``, seed ``seed + i``, name ``gen_<i:06d>``, whatever runs it."""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

NAME_PREFIX = "gen"
MAX_COUNT = 1_000_000  # the most accepted samples one run may ask for (``generate --count``)
MAX_PLAN = 3 * MAX_COUNT  # the most samples one run may plan (``--max-attempts``; the default is 3 x count)


def sample_name(index: int) -> str:
    """Plan index (int >= 0) -> the sample's name in the data set, ``gen_<index:06d>``."""
    return f"{NAME_PREFIX}_{index:06d}"


@dataclass(frozen=True)
class PlannedSample:
    index: int
    name: str
    subject: str
    seed: int


@dataclass(frozen=True)
class Plan:
    """``prompts`` (one subject each, at least one) and the seed of sample 0 -> the samples of a data-factory run."""

    prompts: Sequence[str]
    seed: int = 0

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("prompts: expected at least one subject")
        object.__setattr__(self, "prompts", tuple(self.prompts))

    def sample(self, index: int) -> PlannedSample:
        """Plan index -> its PlannedSample (prompt ``index mod P``, seed ``seed + index``)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index: expected a whole number >= 0, got {index!r}")
        return PlannedSample(index, sample_name(index), self.prompts[index % len(self.prompts)], self.seed + index)

    def pending(self, limit: int, done: Container[str]) -> list[PlannedSample]:
        """The samples of indices ``0 .. limit-1`` whose name is not in ``done`` (committed, rejected or failed), in
        plan order: what a (resumed) run still has to make. ``ValueError`` when ``limit`` is over :data:`MAX_PLAN`
        (the plan is a list: a limit of 10^20 would never finish building it; hostile X6)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_PLAN:
            raise ValueError(f"limit: expected a whole number of samples in 0..{MAX_PLAN}, got {limit!r}")
        return [s for s in map(self.sample, range(limit)) if s.name not in done]
