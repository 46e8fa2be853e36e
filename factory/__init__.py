"""The data factory past one process: the deterministic plan, the work queue (bounded retries, re-queue when a worker
dies, commit in plan order) and its workers.

``plan`` and ``scheduler`` are pure Python (no torch, no ComfyUI, no Ray): the scheduler drives any pool of workers
through a small interface (:class:`scheduler.Pool`), so its fault handling is unit-tested with a fake pool.
``comfy_worker`` runs one planned sample in a ComfyUI of this process and returns it prepared, never writing the data
set; ``ray_pool`` is the thin Ray layer (one actor per worker), imported only when more than one worker is asked for.
"""

from .plan import Plan, PlannedSample, sample_name
from .scheduler import Event, FactoryError, Pool, RunSummary, SerialPool, TaskFailure, run_samples

__all__ = ["Event", "FactoryError", "Plan", "PlannedSample", "Pool", "RunSummary", "SerialPool", "TaskFailure",
           "run_samples", "sample_name"]
