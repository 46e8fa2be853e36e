"""The data factory's core without Ray or ComfyUI: the deterministic plan and the work queue (commit in plan order,
bounded retries, re-queue when a worker dies, a dead slot refilled), driven through a fake pool whose workers finish
in a scripted or shuffled order and can die."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from diffumatting.factory import (Event, FactoryError, Plan, SerialPool, TaskFailure, run_samples, sample_name)
from diffumatting.factory.scheduler import DIED, DONE, ERROR, FATAL, READY


@dataclass
class Result:
    name: str
    accepted: bool
    worker: int


class FakePool:
    """``size`` workers. ``outcome(sample, worker, attempt) -> ("done", accepted) | ("error", reason) |
    ("died", reason) | ("fatal", reason)`` decides each task; ``wait`` finishes one running task, picked by ``rng``
    (shuffled completion order) or the oldest one. Dead slots are refilled ``restarts`` times in total."""

    def __init__(self, size, outcome=None, rng=None, restarts=10, interrupt_after=None, boot_waits=0):
        self.size = size
        self.outcome = outcome or (lambda sample, worker, attempt: ("done", True))
        self.rng = rng
        self.restarts = restarts
        self.interrupt_after = interrupt_after
        self.boot_waits = boot_waits  # a replacement is ready only after this many more waits (it boots ComfyUI)
        self.booting: dict[int, int] = {}
        self.pending_ready = list(range(size))
        self.running: list[tuple[int, object]] = []
        self.attempts: dict[str, int] = {}
        self.submits: list[tuple[int, str]] = []
        self.replaced: list[int] = []
        self.waits = 0
        self.closed = False

    def submit(self, worker, sample):
        assert worker not in {w for w, _ in self.running}, "a busy worker was given a second sample"
        assert worker not in self.pending_ready and worker not in self.booting, "a worker not ready got a sample"
        self.running.append((worker, sample))
        self.submits.append((worker, sample.name))

    def wait(self, timeout):
        self.waits += 1
        if self.interrupt_after is not None and self.waits > self.interrupt_after:
            raise KeyboardInterrupt
        for worker, left in list(self.booting.items()):
            if left <= 0:
                del self.booting[worker]
                self.pending_ready.append(worker)
            else:
                self.booting[worker] = left - 1
        if self.pending_ready:
            worker = self.pending_ready.pop(0)
            return [Event(worker, READY, f"fake {worker}")]
        if not self.running:
            return []
        k = self.rng.randrange(len(self.running)) if self.rng else 0
        worker, sample = self.running.pop(k)
        attempt = self.attempts.get(sample.name, 0) + 1
        self.attempts[sample.name] = attempt
        kind, value = self.outcome(sample, worker, attempt)
        if kind == "done":
            return [Event(worker, DONE, Result(sample.name, value, worker))]
        return [Event(worker, {"error": ERROR, "died": DIED, "fatal": FATAL}[kind], reason=value)]

    def replace(self, worker):
        if len(self.replaced) >= self.restarts:
            return False
        self.replaced.append(worker)
        self.booting[worker] = self.boot_waits
        return True

    def close(self):
        self.closed = True


class Sink:
    """commit / fail callbacks recording what the one writer would store, refusing a duplicate."""

    def __init__(self):
        self.rows: list[tuple[str, str]] = []  # (name, "accepted" | "rejected" | "failed")
        self.failures: dict[str, tuple[str, int]] = {}

    def commit(self, sample, result):
        assert result.name == sample.name
        assert sample.name not in {n for n, _ in self.rows}, f"{sample.name} committed twice"
        self.rows.append((sample.name, "accepted" if result.accepted else "rejected"))
        return result.accepted

    def fail(self, sample, reason, attempts):
        assert sample.name not in {n for n, _ in self.rows}, f"{sample.name} recorded twice"
        self.rows.append((sample.name, "failed"))
        self.failures[sample.name] = (reason, attempts)


def sequential(samples, needed, verdict):
    """What a one-process run commits: samples in plan order until ``needed`` are accepted."""
    rows, accepted = [], 0
    for s in samples:
        if accepted >= needed:
            break
        v = verdict(s)
        rows.append((s.name, v))
        accepted += v == "accepted"
    return rows


# -- the plan ---------------------------------------------------------------------------------------------------

def test_plan_is_prompt_i_mod_p_seed_plus_i_name_gen_i():
    plan = Plan(["apple", "mug", "hat"], seed=100)
    s = plan.sample(7)
    assert (s.index, s.name, s.subject, s.seed) == (7, "gen_000007", "mug", 107)
    assert [plan.sample(i).subject for i in range(6)] == ["apple", "mug", "hat"] * 2
    assert sample_name(123456) == "gen_123456"
    done = {"gen_000000", "gen_000002"}
    assert [p.index for p in plan.pending(5, done)] == [1, 3, 4]
    assert plan.pending(5, done) == Plan(("apple", "mug", "hat"), seed=100).pending(5, done)  # value semantics
    with pytest.raises(ValueError, match="index"):
        plan.sample(-1)
    with pytest.raises(ValueError, match="prompts"):
        Plan([])


# -- commit order -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2, 3, 5])
@pytest.mark.parametrize("order_seed", [0, 1, 2])
def test_commits_are_the_one_process_run_whatever_the_workers_and_finishing_order(workers, order_seed):
    samples = Plan(["a", "b"], seed=5).pending(30, set())
    verdict = lambda s: "rejected" if s.index % 3 == 1 else "accepted"  # noqa: E731
    pool = FakePool(workers, lambda s, w, a: ("done", verdict(s) == "accepted"), rng=random.Random(order_seed))
    sink = Sink()
    summary = run_samples(pool, samples, sink.commit, sink.fail, needed=12)
    expected = sequential(samples, 12, verdict)
    assert sink.rows == expected
    assert summary.accepted == 12 and summary.rejected == sum(v == "rejected" for _, v in expected)
    assert summary.failed == 0 and summary.deaths == 0
    if workers > 1:  # the work really was spread
        assert len({w for w, _ in pool.submits}) == workers


def test_stops_at_the_need_and_drops_what_finished_past_it():
    samples = Plan(["a"]).pending(20, set())
    pool = FakePool(4, rng=random.Random(3))
    sink = Sink()
    summary = run_samples(pool, samples, sink.commit, sink.fail, needed=3)
    assert sink.rows == [(f"gen_{i:06d}", "accepted") for i in range(3)]
    # never more handed out than could still be needed: 3 accepted needed, 4 workers -> at most 3 submitted at once
    assert len(pool.submits) == 3 and summary.dropped == 0


def test_lookahead_bounds_how_far_past_the_first_uncommitted_sample_work_goes():
    samples = Plan(["a"]).pending(40, set())
    sink = Sink()
    heads = []

    class SlowHead(FakePool):
        def submit(self, worker, sample):
            heads.append(sample.index - len(sink.rows))
            super().submit(worker, sample)

        def wait(self, timeout):  # gen_000000 finishes last of everything running
            if not self.pending_ready and len(self.running) > 1 and self.running[0][1].index == 0:
                self.running.append(self.running.pop(0))
            return super().wait(timeout)

    run_samples(SlowHead(3), samples, sink.commit, sink.fail, needed=40, lookahead=6)
    assert sink.rows == [(s.name, "accepted") for s in samples]
    assert max(heads) == 5  # handed out up to 5 past the head, never 6


# -- faults -------------------------------------------------------------------------------------------------------

def test_a_dead_worker_has_its_sample_requeued_elsewhere_and_its_slot_refilled():
    samples = Plan(["a", "b"]).pending(8, set())

    def outcome(sample, worker, attempt):
        if sample.index == 2 and attempt == 1:
            return "died", "ActorDiedError: killed by signal 9"
        return "done", True

    pool = FakePool(2, outcome, boot_waits=3)
    sink, log = Sink(), []
    summary = run_samples(pool, samples, sink.commit, sink.fail, needed=8, log=log.append)
    assert sink.rows == [(s.name, "accepted") for s in samples]  # none lost, none twice
    assert pool.attempts["gen_000002"] == 2 and summary.deaths == 1 and summary.retried == 1
    first, second = [w for w, n in pool.submits if n == "gen_000002"]
    assert pool.replaced == [first]
    assert second != first  # re-queued to the other worker, not to the slot still booting its replacement
    assert any("died running gen_000002" in line for line in log)
    assert any("gen_000002: re-queued (attempt 2 of 3)" in line for line in log)


def test_a_sample_that_keeps_failing_is_recorded_failed_once_in_its_place():
    samples = Plan(["a"]).pending(6, set())
    pool = FakePool(3, lambda s, w, a: ("error", f"CUDA out of memory (try {a})\nTraceback...") if s.index == 3
                    else ("done", True), rng=random.Random(0))
    sink = Sink()
    summary = run_samples(pool, samples, sink.commit, sink.fail, needed=6, max_tries=4)
    assert sink.rows == [(s.name, "failed" if s.index == 3 else "accepted") for s in samples]
    assert sink.failures == {"gen_000003": ("CUDA out of memory (try 4)", 4)}  # the last reason, one line
    assert pool.attempts["gen_000003"] == 4 and summary.failed == 1 and summary.accepted == 5
    # the failed sample does not count toward the need: the run went on to the end of the plan
    workers_of_3 = [w for w, n in pool.submits if n == "gen_000003"]
    assert all(a != b for a, b in zip(workers_of_3, workers_of_3[1:]))  # each retry on another worker


def test_a_sample_that_kills_its_worker_every_time_is_failed_not_retried_forever():
    samples = Plan(["a"]).pending(4, set())
    pool = FakePool(2, lambda s, w, a: ("died", "out of memory: killed by the memory monitor") if s.index == 1
                    else ("done", True), restarts=100)
    sink = Sink()
    summary = run_samples(pool, samples, sink.commit, sink.fail, needed=4, max_tries=3)
    assert sink.rows == [("gen_000000", "accepted"), ("gen_000001", "failed"), ("gen_000002", "accepted"),
                         ("gen_000003", "accepted")]
    assert sink.failures["gen_000001"] == ("worker died: out of memory: killed by the memory monitor", 3)
    assert summary.deaths == 3 and len(pool.replaced) == 3


def test_when_no_worker_is_left_the_run_stops_keeping_what_was_committed():
    samples = Plan(["a"]).pending(10, set())
    pool = FakePool(2, lambda s, w, a: ("died", "node lost") if s.index >= 3 else ("done", True), restarts=1)
    sink = Sink()
    with pytest.raises(FactoryError, match="every worker died"):
        run_samples(pool, samples, sink.commit, sink.fail, needed=10, max_tries=5)
    assert sink.rows == [(f"gen_{i:06d}", "accepted") for i in range(3)]


def test_a_fatal_report_stops_the_run_at_once():
    samples = Plan(["a"]).pending(10, set())
    pool = FakePool(2, lambda s, w, a: ("fatal", "the workflow is not valid here: no node DMFoo") if s.index == 2
                    else ("done", True))
    sink = Sink()
    with pytest.raises(FactoryError, match=r"worker \d \(fake \d\): the workflow is not valid here: no node DMFoo"):
        run_samples(pool, samples, sink.commit, sink.fail, needed=10)
    assert ("gen_000002", "failed") not in sink.rows and not sink.failures  # a config error is not a sample's fault
    assert len(pool.submits) < 10


def test_an_interrupt_propagates_and_what_was_committed_stays():
    samples = Plan(["a"]).pending(10, set())
    pool = FakePool(2, interrupt_after=6)
    sink = Sink()
    with pytest.raises(KeyboardInterrupt):
        run_samples(pool, samples, sink.commit, sink.fail, needed=10)
    assert sink.rows and sink.rows == [(f"gen_{i:06d}", "accepted") for i in range(len(sink.rows))]


def test_resume_runs_only_what_is_missing():
    plan = Plan(["a", "b", "c"], seed=9)
    done = {"gen_000000", "gen_000001", "gen_000004"}  # committed, rejected or failed by an earlier run
    pool = FakePool(2, rng=random.Random(5))
    sink = Sink()
    run_samples(pool, plan.pending(8, done), sink.commit, sink.fail, needed=3)
    assert sink.rows == [("gen_000002", "accepted"), ("gen_000003", "accepted"), ("gen_000005", "accepted")]
    assert not {n for _, n in pool.submits} & done


def test_serial_pool_runs_in_this_process_and_reports_failures():
    calls = []

    def run(sample):
        calls.append(sample.name)
        if sample.index == 1 and calls.count(sample.name) == 1:
            return TaskFailure("error", "flaky")
        return Result(sample.name, True, 0)

    sink = Sink()
    summary = run_samples(SerialPool(run), Plan(["a"]).pending(3, set()), sink.commit, sink.fail, needed=3)
    assert calls == ["gen_000000", "gen_000001", "gen_000001", "gen_000002"]
    assert sink.rows == [(f"gen_{i:06d}", "accepted") for i in range(3)] and summary.retried == 1
    fatal = SerialPool(lambda s: TaskFailure("fatal", "bad workflow"))
    with pytest.raises(FactoryError, match="bad workflow"):
        run_samples(fatal, Plan(["a"]).pending(3, set()), sink.commit, sink.fail, needed=3)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="max_tries"):
        run_samples(FakePool(1), [], lambda *a: True, lambda *a: None, needed=1, max_tries=0)
    assert run_samples(FakePool(1), [], lambda *a: True, lambda *a: None, needed=1).ran == 0


def test_a_run_where_nothing_works_stops_after_a_few_failures_instead_of_failing_the_whole_plan():
    pool = FakePool(2, lambda s, w, a: ("error", "ModuleNotFoundError: No module named 'foo'"))
    sink = Sink()
    with pytest.raises(FactoryError, match=r"first 3 samples of this run all failed .*No module named 'foo'.*"
                                           r"--retry-failed"):
        run_samples(pool, Plan(["a"]).pending(50, set()), sink.commit, sink.fail, needed=50)
    assert sink.rows == [(f"gen_{i:06d}", "failed") for i in range(3)]
    assert len(pool.submits) < 20  # not 50 samples x 3 tries
    # once something worked, later failures are the samples' own: the run goes on
    pool = FakePool(2, lambda s, w, a: ("error", "boom") if s.index else ("done", True))
    sink = Sink()
    summary = run_samples(pool, Plan(["a"]).pending(6, set()), sink.commit, sink.fail, needed=6)
    assert summary.accepted == 1 and summary.failed == 5
