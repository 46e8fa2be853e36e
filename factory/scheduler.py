"""The factory's work queue, pure Python: planned samples go to a pool of workers, results come back and are committed
in plan order by the caller's one writer.

Faults: a sample whose worker reports an error, or dies under it (``kill -9``, out of memory, a lost node), is
re-queued (to another worker when one is idle) until it has had ``max_tries`` attempts; then it is recorded as failed
with the last reason (``fail``), never retried forever and never dropped. A dead worker's slot is refilled by the
pool (:meth:`Pool.replace`) as long as the pool allows; when no worker is left the run stops with
:class:`FactoryError`. A ``fatal`` report (a workflow that is not valid, a ComfyUI that cannot start) stops the run at
once: retrying a configuration error on every sample would only fill ``failed.jsonl``.

Order: results are committed in plan order (a finished sample waits for the ones planned before it, at most
``lookahead`` positions ahead are handed out), and the run stops when ``needed`` samples were accepted; results past
that point are dropped uncommitted. So the data set holds exactly the samples a one-process run would have made,
whatever the number of workers and whatever order they finish in.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .plan import PlannedSample

# Event kinds a pool reports.
READY, DONE, ERROR, DIED, FATAL = "ready", "done", "error", "died", "fatal"


class FactoryError(ValueError):
    """The run cannot go on (a configuration error a worker reported, or no worker left); the message says why."""


@dataclass
class TaskFailure:
    """What a worker returns instead of a sample: ``kind`` "error" (this sample failed; worth another try) or "fatal"
    (nothing will work: stop the run); ``reason`` is one line. Plain data, so it crosses process boundaries."""

    kind: str
    reason: str


@dataclass
class Event:
    """A pool's report about worker slot ``worker``: READY (it can take work; ``value`` describes it), or the outcome
    of the sample it was given: DONE (``value`` = the result), ERROR, DIED or FATAL (``reason``)."""

    worker: int
    kind: str
    value: object = None
    reason: str = ""


class Pool(Protocol):
    """Worker slots ``0 .. size-1``; each reports READY once (again after :meth:`replace`) and runs one sample at a
    time."""

    size: int

    def submit(self, worker: int, sample: PlannedSample) -> None:
        """Start ``sample`` on worker slot ``worker`` (which is ready and idle)."""

    def wait(self, timeout: float) -> list[Event]:
        """Events that happened (waits up to ``timeout`` seconds for the first; ``[]`` if none)."""

    def replace(self, worker: int) -> bool:
        """A fresh worker in the slot of one that died (it reports READY when up) -> False when the pool gives up."""

    def close(self) -> None:
        """Stop every worker (samples still running are abandoned)."""


@dataclass
class WorkerStats:
    ready_since: float | None = None
    done: int = 0
    deaths: int = 0
    info: str = ""

    def rate(self, now: float) -> float:
        """Samples per second since the worker became ready (0 before)."""
        if self.ready_since is None or now <= self.ready_since:
            return 0.0
        return self.done / (now - self.ready_since)


@dataclass
class RunSummary:
    """What this run did: samples committed as accepted / rejected, recorded as failed, results dropped past the stop
    point, attempts repeated, worker deaths, and per-worker statistics."""

    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    dropped: int = 0
    retried: int = 0
    deaths: int = 0
    workers: dict[int, WorkerStats] = field(default_factory=dict)
    started: float = 0.0

    @property
    def ran(self) -> int:
        """Samples generated and committed in this run (accepted or rejected)."""
        return self.accepted + self.rejected


@dataclass
class _Failed:
    reason: str
    attempts: int


def _one_line(text) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def run_samples(pool: Pool, samples: Sequence[PlannedSample], commit: Callable[[PlannedSample, object], bool],
                fail: Callable[[PlannedSample, str, int], None], *, needed: int, max_tries: int = 3,
                lookahead: int | None = None, give_up_after: int | None = 3,
                log: Callable[[str], None] | None = None, progress: Callable[[RunSummary], None] | None = None,
                poll: float = 0.5, clock: Callable[[], float] = time.monotonic) -> RunSummary:
    """Run ``samples`` (plan order) on ``pool`` until ``needed`` were accepted or every one is done -> RunSummary.

    ``commit(sample, result) -> accepted`` stores a finished sample (called in plan order, from this thread only);
    ``fail(sample, reason, attempts)`` records one that failed ``max_tries`` times. ``lookahead`` (default: four per
    worker) bounds how far past the first uncommitted sample work is handed out, and so how many finished results wait
    in memory. :class:`FactoryError` on a FATAL report, when no worker is left, or when the first ``give_up_after``
    samples of the run all failed and none succeeded (a broken set-up, not bad samples: going on would only record the
    whole plan as failed; those recorded stay recorded); anything ``pool.wait`` raises
    (KeyboardInterrupt) propagates, with everything committed so far kept. The pool is not closed here.
    """
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"max_tries: expected a whole number >= 1, got {max_tries!r}")
    say = log or (lambda message: None)
    order = list(samples)
    window = lookahead if lookahead is not None else max(4, 4 * pool.size)
    summary = RunSummary(workers={w: WorkerStats() for w in range(pool.size)}, started=clock())
    queue = list(range(len(order)))  # positions to hand out, a heap: a retried sample goes before later ones
    heapq.heapify(queue)
    tries = [0] * len(order)
    last_worker: dict[int, int] = {}
    buffered: dict[int, object] = {}  # position -> result or _Failed, waiting for the positions before it
    inflight: dict[int, int] = {}  # worker -> position
    idle: list[int] = []  # ready workers without work
    lost: set[int] = set()  # slots the pool gave up on
    head = 0  # first position not committed yet
    accepted = 0

    def expected_before(position: int) -> int:
        """Accepted samples to expect from the positions before ``position`` that are already done or running."""
        done = sum(1 for q, v in buffered.items() if q < position and getattr(v, "accepted", not isinstance(v, _Failed)))
        return done + sum(1 for q in inflight.values() if q < position)

    def attempt_failed(position: int, reason: str, worker: int) -> None:
        tries[position] += 1
        sample = order[position]
        if tries[position] >= max_tries:
            buffered[position] = _Failed(reason, tries[position])
            say(f"{sample.name}: failed {tries[position]} times, recorded as failed ({reason})")
        else:
            summary.retried += 1
            heapq.heappush(queue, position)
            say(f"{sample.name}: re-queued (attempt {tries[position] + 1} of {max_tries}) after: {reason}")

    while head < len(order) and accepted < needed:
        # hand out work: lowest positions first, never past the window, never more than the need still open
        while idle and queue:
            position = queue[0]
            if position - head >= window or accepted + expected_before(position) >= needed:
                break
            heapq.heappop(queue)
            others = [w for w in idle if w != last_worker.get(position)]
            worker = (others or idle)[0]  # a retry goes to another worker when one is free
            idle.remove(worker)
            inflight[worker] = position
            last_worker[position] = worker
            pool.submit(worker, order[position])
        if not inflight and not idle and len(lost) == pool.size:
            raise FactoryError(f"every worker died ({summary.deaths} deaths); nothing is running any more "
                               "(what was committed stays; rerun the command to resume)")
        for event in pool.wait(poll):
            stats = summary.workers.setdefault(event.worker, WorkerStats())
            position = inflight.pop(event.worker, None) if event.kind != READY else None
            if event.kind == READY:
                stats.ready_since, stats.info = clock(), str(event.value or "")
                say(f"worker {event.worker}: ready" + (f" ({stats.info})" if stats.info else ""))
                if event.worker not in idle:
                    idle.append(event.worker)
            elif event.kind == FATAL:
                raise FactoryError(f"worker {event.worker}" + (f" ({stats.info})" if stats.info else "") + ": "
                                   + _one_line(event.reason))
            elif event.kind == DONE and position is not None:
                stats.done += 1
                buffered[position] = event.value
                idle.append(event.worker)
            elif event.kind == ERROR and position is not None:
                attempt_failed(position, _one_line(event.reason), event.worker)
                idle.append(event.worker)
            elif event.kind == DIED:
                summary.deaths += 1
                stats.deaths += 1
                stats.ready_since = None
                what = f" running {order[position].name}" if position is not None else ""
                say(f"worker {event.worker}: died{what} ({_one_line(event.reason)})")
                if position is not None:
                    attempt_failed(position, f"worker died: {_one_line(event.reason)}", event.worker)
                if event.worker in idle:
                    idle.remove(event.worker)
                if pool.replace(event.worker):
                    say(f"worker {event.worker}: starting a replacement")
                else:
                    lost.add(event.worker)
                    say(f"worker {event.worker}: not replaced ({pool.size - len(lost)} left)")
        # commit in plan order
        while head in buffered and accepted < needed:
            value = buffered.pop(head)
            sample = order[head]
            if isinstance(value, _Failed):
                fail(sample, value.reason, value.attempts)
                summary.failed += 1
                worked = summary.ran or any(not isinstance(v, _Failed) for v in buffered.values())
                if give_up_after is not None and summary.failed >= give_up_after and not worked:
                    raise FactoryError(f"the first {summary.failed} samples of this run all failed and none worked "
                                       f"(last: {value.reason}); stopped, as this looks like a problem of the set-up "
                                       "rather than of these samples: fix it and rerun with --retry-failed")
            elif commit(sample, value):
                accepted += 1
                summary.accepted += 1
            else:
                summary.rejected += 1
            head += 1
        if progress is not None:
            progress(summary)
    summary.dropped = sum(1 for v in buffered.values() if not isinstance(v, _Failed)) + len(inflight)
    return summary


class SerialPool:
    """One worker in this process: ``run(sample)`` makes the sample (or returns a :class:`TaskFailure`) when
    :meth:`wait` is called. It cannot die without taking the run with it, so it is never replaced."""

    size = 1

    def __init__(self, run: Callable[[PlannedSample], object], info: str = "in this process"):
        self._run = run
        self._info = info
        self._announced = False
        self._task: PlannedSample | None = None

    def submit(self, worker: int, sample: PlannedSample) -> None:
        if worker != 0 or self._task is not None:
            raise RuntimeError("SerialPool: one task at a time on worker 0")
        self._task = sample

    def wait(self, timeout: float) -> list[Event]:
        if not self._announced:
            self._announced = True
            return [Event(0, READY, self._info)]
        if self._task is None:
            return []
        sample, self._task = self._task, None
        value = self._run(sample)
        if isinstance(value, TaskFailure):
            return [Event(0, FATAL if value.kind == FATAL else ERROR, reason=value.reason)]
        return [Event(0, DONE, value)]

    def replace(self, worker: int) -> bool:
        return False

    def close(self) -> None:
        self._task = None
