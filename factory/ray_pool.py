"""The thin Ray layer of the factory: one Ray actor per worker, each booting ComfyUI once (:mod:`.comfy_worker`).

Imported only when ``generate`` runs more than one worker (``--workers N`` / ``--ray ADDRESS``); Ray is an optional
dependency (``requirements-ray.txt``). Actors return prepared samples (:class:`dataset.PreparedSample`: row and
encoded files) or a :class:`TaskFailure`; an actor process that dies surfaces as a DIED event and its slot gets a fresh
actor, at most ``max_restarts`` times. Scheduling, retries and the commit order live in :mod:`.scheduler`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .plan import PlannedSample
from .scheduler import DIED, DONE, ERROR, FATAL, READY, Event, FactoryError, TaskFailure

INSTALL_HINT = "pip install -r requirements-ray.txt (in the pack's folder; it is ray>=2.40)"


def import_ray(what: str):
    """-> the ``ray`` module; FactoryError naming ``what`` (the option that needs it) when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise FactoryError(f"{what} needs Ray, which is not installed in this Python: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class WorkerConfig:
    """What each worker needs to boot: paths as seen on the worker's machine."""

    comfyui: str
    cpu: bool = False
    extra_model_paths: str | None = None
    custom_nodes: tuple[str, ...] = ()
    checkpoint: str | None = None


class FactoryWorker:
    """The actor: ``boot()`` once (-> a description with its pid, or a TaskFailure), then ``run(name, prompt)`` per
    sample (-> PreparedSample or TaskFailure). Every failure is returned, never raised, so it crosses back intact."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.comfy = None
        self.failure: TaskFailure | None = None

    def boot(self):
        from .comfy_worker import boot

        try:
            self.comfy = boot(self.config.comfyui, cpu=self.config.cpu,
                              extra_model_paths=self.config.extra_model_paths,
                              custom_nodes=self.config.custom_nodes, checkpoint=self.config.checkpoint)
        except Exception as exc:  # noqa: BLE001 - reported to the driver as one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.failure = TaskFailure(FATAL, f"on {socket.gethostname()}: {first}")
            return self.failure
        return f"pid {os.getpid()} on {socket.gethostname()}, {self.comfy.device}"

    def run(self, name: str, prompt: dict):
        from .comfy_worker import run_sample

        if self.comfy is None:
            return self.failure or TaskFailure(FATAL, "the worker did not boot")
        return run_sample(self.comfy.runner.run, prompt, name, self.comfy.root, self.comfy.temp)

    def close(self) -> None:
        """Remove the worker's private ComfyUI folders (before the driver ends the actor)."""
        if self.comfy is not None:
            shutil.rmtree(self.comfy.workdir, ignore_errors=True)


@dataclass
class _Slot:
    actor: object = None
    generation: int = 0
    restarts: int = 0
    refs: dict = field(default_factory=dict)  # ObjectRef -> "boot" | "run"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if "OutOfMemoryError" in type(exc).__name__ or "out of memory" in text.lower():
        return "out of memory: " + (text.splitlines() or [""])[0]
    return (text.splitlines() or [type(exc).__name__])[0]


class RayPool:
    """``size`` Ray actors (each with ``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs) on a local Ray cluster
    started here (``address=None``) or on an existing one; implements :class:`scheduler.Pool`.

    ``make_prompt(sample) -> dict`` builds each sample's API prompt on the driver. FactoryError (one line) when Ray is
    missing, the cluster cannot be reached, or it lacks the GPUs / CPUs asked for.
    """

    def __init__(self, size: int, config: WorkerConfig, make_prompt: Callable[[PlannedSample], dict], *,
                 address: str | None = None, gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0,
                 max_restarts: int = 2, what: str = "--workers"):
        self.size = size
        self.config = config
        self.make_prompt = make_prompt
        self.address = address
        self.gpus, self.cpus = gpus_per_worker, cpus_per_worker
        self.max_restarts = max_restarts
        self.what = what
        self.ray = None
        self._own_connection = False  # this pool called ray.init (so it shuts Ray down again)
        self._actor_cls = None
        self._slots = [_Slot() for _ in range(size)]

    # -- lifetime ----------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start a local Ray cluster (``address=None``) or join the one at ``address``; nothing if connected."""
        ray = self.ray = self.ray or import_ray(self.what)
        if ray.is_initialized():
            return
        # Ray's usage statistics would be sent over the network; the pack never does that unless told to.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        common = dict(log_to_driver=False, logging_level=logging.WARNING)
        try:
            if self.address:
                ray.init(address=self.address, **common)
            else:
                ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(self.size * self.cpus)), include_dashboard=False,
                         **common)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError ...
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
            hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token, see the README)"
                    if self.address else "")
            raise FactoryError(f"{'--ray' if self.address else self.what}: cannot start or reach {where}: "
                               f"{_reason(exc)}{hint}") from None
        self._own_connection = True

    def resize(self, size: int) -> None:
        """Set the number of workers (before :meth:`start`)."""
        self.size = size
        self._slots = [_Slot() for _ in range(size)]

    def start(self) -> "RayPool":
        """Connect, check the cluster's resources, create the actors (they boot in the background)."""
        self.connect()
        self._check_resources()
        self._actor_cls = self.ray.remote(FactoryWorker)
        for worker in range(self.size):
            self._spawn(worker)
        return self

    def describe(self) -> str:
        """One line: how many workers, what each gets, where."""
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray cluster"
        return f"{self.size} workers ({self.gpus:g} GPU, {self.cpus:g} CPU each) on {where}"

    def _check_resources(self) -> None:
        have = self.ray.cluster_resources()
        for kind, each in (("GPU", self.gpus), ("CPU", self.cpus)):
            need, got = self.size * each, have.get(kind, 0)
            if need > got:
                extra = " (CPU workers: add --cpu, or --gpus-per-worker 0)" if kind == "GPU" else ""
                raise FactoryError(f"{self.what}: {self.size} workers x {each:g} {kind} need {need:g} {kind}s, the Ray "
                                   f"cluster has {got:g}{extra}")

    def _spawn(self, worker: int) -> None:
        slot = self._slots[worker]
        slot.generation += 1
        slot.refs = {}
        slot.actor = self._actor_cls.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                             max_task_retries=0).remote(self.config)
        slot.refs[slot.actor.boot.remote()] = "boot"

    def close(self) -> None:
        """Kill every actor; disconnect from Ray if this pool connected (a local cluster it started stops, a joined
        cluster keeps running)."""
        if self.ray is None:
            return
        # let live workers remove their folders first (a worker that is busy or dead is just killed)
        closing = [slot.actor.close.remote() for slot in self._slots if slot.actor is not None]
        if closing:
            try:
                self.ray.wait(closing, num_returns=len(closing), timeout=5)
            except Exception:  # noqa: BLE001 - the cluster may be gone already
                pass
        for slot in self._slots:
            if slot.actor is not None:
                try:
                    self.ray.kill(slot.actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead
                    pass
                slot.actor, slot.refs = None, {}
        if self._own_connection and self.ray.is_initialized():
            self.ray.shutdown()  # a local cluster stops; from a joined one only this driver disconnects
        self.ray = None

    # -- Pool --------------------------------------------------------------------------------------------------
    def submit(self, worker: int, sample: PlannedSample) -> None:
        slot = self._slots[worker]
        slot.refs[slot.actor.run.remote(sample.name, self.make_prompt(sample))] = "run"

    def replace(self, worker: int) -> bool:
        slot = self._slots[worker]
        if slot.actor is not None:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - it is dead already
                pass
            slot.actor = None
        if slot.restarts >= self.max_restarts:
            slot.refs = {}
            return False
        slot.restarts += 1
        self._spawn(worker)
        return True

    def wait(self, timeout: float) -> list[Event]:
        owner = {ref: (w, kind) for w, slot in enumerate(self._slots) for ref, kind in slot.refs.items()}
        if not owner:
            return []
        ready, _ = self.ray.wait(list(owner), num_returns=1, timeout=timeout)
        if ready:  # collect whatever else is finished too
            ready, _ = self.ray.wait(list(owner), num_returns=len(owner), timeout=0)
        events = []
        for ref in ready:
            worker, kind = owner[ref]
            slot = self._slots[worker]
            if ref not in slot.refs:  # its actor already reported dead through another call
                continue
            del slot.refs[ref]
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:  # a bug in our worker code: that sample failed
                events.append(Event(worker, ERROR, reason=_reason(exc)))
                continue
            except self.ray.exceptions.RayError as exc:  # the actor process died (kill -9, OOM, lost node)
                slot.refs = {}
                events.append(Event(worker, DIED, reason=_reason(exc)))
                continue
            if isinstance(value, TaskFailure):
                events.append(Event(worker, FATAL if value.kind == FATAL or kind == "boot" else ERROR,
                                    reason=value.reason))
            elif kind == "boot":
                events.append(Event(worker, READY, value))
            else:
                events.append(Event(worker, DONE, value))
        return events
