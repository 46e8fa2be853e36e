"""`python -m diffumatting generate`: the data factory. Runs the pack's generation workflow headless inside a ComfyUI
installation (in this process, or on N Ray workers: ``--workers N`` on this machine, ``--ray ADDRESS`` on a cluster)
and writes a matting data set (see SaveMattingDataset) with resume.

The plan is deterministic (:mod:`factory.plan`): sample ``i`` uses prompt ``i mod P`` and seed ``seed + i`` and is
named ``gen_<i:06d>``. A sample whose name is already in the data set (written, rejected by the quality gate, or
recorded as failed) is never run again, so a stopped run resumes where it stopped without redoing or duplicating
samples. This process is the data set's single writer: workers (and ComfyUI in this process) hand back each sample
prepared, and it is committed here in plan order, so the data set is the same whatever the number of workers.
``--count`` is the number of accepted samples wanted; ``--max-attempts`` bounds the work when the gate rejects many.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time

from .. import CLIError

DATASET_NODE = "DiffuMattingSaveMattingDataset"
DEFAULT_WORKFLOW = os.path.join("workflows", "api", "09_data_factory.json")
SEED_INPUTS = ("seed", "noise_seed")
SUBJECT_INPUTS = ("subject",)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="data factory: generate a matting data set with ComfyUI (headless, resumable)",
        description="Generate objects on a green canvas with the pack's data-factory workflow, key them, and write "
        "a matting data set (image/ fg/ alpha/ trimap/ caption/ metadata.jsonl) with a quality gate. Runs ComfyUI "
        "in this process; a stopped run resumes without redoing or duplicating samples.")
    p.add_argument("--comfyui", required=True, metavar="PATH", help="ComfyUI installation (its folder)")
    p.add_argument("--checkpoint", required=True, metavar="NAME", help="checkpoint file in ComfyUI's models/checkpoints")
    p.add_argument("--prompts", required=True, metavar="FILE", help="text file, one subject per line ('#' = comment)")
    p.add_argument("--count", required=True, type=int, metavar="N", help="accepted samples wanted (1..1000000 per run)")
    p.add_argument("--out", required=True, metavar="DIR", help="data-set folder (created; resumed if it exists)")
    p.add_argument("--workflow", default=None, metavar="FILE",
                   help=f"API-format workflow with one {DATASET_NODE} node (default: the pack's {DEFAULT_WORKFLOW})")
    p.add_argument("--seed", type=int, default=0, help="seed of sample 0; sample i uses seed + i (default 0)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="stop after this many samples generated in total, accepted or not (default 3 x count; at most "
                   "3000000)")
    p.add_argument("--steps", type=int, default=None, help="override the sampler's steps")
    p.add_argument("--size", type=int, default=None, metavar="PX", help="override width and height (multiple of 8)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (every worker's, with --workers/--ray)")
    p.add_argument("--extra-model-paths", default=None, metavar="YAML", help="an extra_model_paths.yaml to load")
    p.add_argument("--custom-nodes", action="append", default=[], metavar="PATH",
                   help="a ComfyUI node pack (folder or .py) the workflow needs besides this one; repeatable")
    p.add_argument("--max-tries", type=int, default=3, metavar="K",
                   help="attempts per sample (errors and worker deaths) before it is recorded as failed (default 3)")
    p.add_argument("--retry-failed", action="store_true",
                   help="make the samples recorded as failed (failed.jsonl) again instead of skipping them")
    ray = p.add_argument_group(
        "several GPUs or machines (Ray; pip install -r requirements-ray.txt)",
        "With --workers N > 1 or --ray, N Ray workers each boot ComfyUI once and make the samples they are given; "
        "this process stays the data set's only writer. --comfyui, --extra-model-paths and --custom-nodes are paths on "
        "the workers' machines.")
    ray.add_argument("--workers", default="1", metavar="N",
                     help="workers: 1 (default: ComfyUI in this process, no Ray), N, or 'auto' (one per GPU of the "
                     "Ray cluster)")
    ray.add_argument("--ray", default=None, metavar="ADDRESS",
                     help="join this existing Ray cluster (host:port of its head, or 'auto') instead of starting a "
                     "local one")
    ray.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                     help="GPUs per worker (default 1; 0 with --cpu)")
    ray.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per worker (default 1)")
    ray.add_argument("--worker-restarts", type=int, default=2, metavar="R",
                     help="fresh workers started in the place of one that died, per worker (default 2)")
    p.set_defaults(func=run)


MAX_TEXT_BYTES = 16 * 2**20  # the largest --prompts / --workflow file read (16 MiB)


def read_small_file(path: str, what: str) -> bytes:
    """The bytes of a regular file of at most :data:`MAX_TEXT_BYTES`; CLIError naming ``what`` for a folder, a FIFO,
    a device (``/dev/zero`` would be read for ever, a FIFO would block; hostile X5), a larger file or a read error."""
    import stat

    from ...common.images import not_a_file

    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise CLIError(f"{what}: {path}: {not_a_file(path).replace('an image file', 'a text file')}")
    if st.st_size > MAX_TEXT_BYTES:
        raise CLIError(f"{what}: {path} is {st.st_size / 2**20:.1f} MiB; at most {MAX_TEXT_BYTES // 2**20} MiB is "
                       "read (expected a text file)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise CLIError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_TEXT_BYTES:  # it grew meanwhile
        raise CLIError(f"{what}: {path} is over {MAX_TEXT_BYTES // 2**20} MiB (expected a text file)")
    return data


def read_prompts(path: str) -> list[str]:
    """Non-empty, non-comment lines of a prompts file (a regular file of at most 16 MiB)."""
    data = read_small_file(path, "--prompts")
    try:
        text = data.decode("utf-8-sig")
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError as exc:
        raise CLIError(f"--prompts: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                       f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CLIError(f"--prompts: cannot read {path}: {exc.strerror}") from None
    if not prompts:
        raise CLIError(f"--prompts: {path} holds no prompts (one subject per line)")
    return prompts


def load_workflow(path: str) -> dict:
    """An API-format workflow (``{"id": {"class_type", "inputs"}}``) with exactly one SaveMattingDataset node."""
    data = read_small_file(path, "--workflow")
    try:
        wf = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise CLIError(f"--workflow: cannot read {path}: {exc}") from None
    if not isinstance(wf, dict) or not all(isinstance(v, dict) and "class_type" in v for v in wf.values()):
        raise CLIError(f"--workflow: {path} is not an API-format workflow (export it with 'Export (API)')")
    found = [k for k, v in wf.items() if v["class_type"] == DATASET_NODE]
    if len(found) != 1:
        raise CLIError(f"--workflow: {path} must hold exactly one {DATASET_NODE} node, found {len(found)}")
    return wf


def build_prompt(template: dict, *, checkpoint: str | None, subject: str, seed: int, name: str, folder: str,
                 steps: int | None = None, size: int | None = None) -> dict:
    """The template with this sample's checkpoint, subject, seed and data-set name filled in (a new dict)."""
    prompt = copy.deepcopy(template)
    for node in prompt.values():
        inputs = node.setdefault("inputs", {})
        kind = node["class_type"]
        if kind == DATASET_NODE:
            inputs.update(name=name, folder=folder)
            for key, value in (("prompt", subject), ("seed", seed)):
                if not isinstance(inputs.get(key), list):
                    inputs[key] = value
            if checkpoint is not None:
                inputs["model"] = checkpoint
            continue
        title = str(node.get("_meta", {}).get("title", "")).lower()
        if kind.startswith("Primitive") and title in ("seed", "subject"):
            inputs["value"] = seed if title == "seed" else subject
            continue
        if kind == "CheckpointLoaderSimple" and checkpoint is not None:
            inputs["ckpt_name"] = checkpoint
        for key in SEED_INPUTS:
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = seed
        for key in SUBJECT_INPUTS:
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = subject
        if steps is not None and "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = steps
        if size is not None:
            for key in ("width", "height"):
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = size
    return prompt


def run_factory(execute, template: dict, prompts: list[str], count: int, root: str, folder: str, *,
                checkpoint: str | None, seed: int = 0, max_attempts: int | None = None, steps: int | None = None,
                size: int | None = None, progress: bool = True, max_tries: int = 3, temp: str | None = None) -> dict:
    """Generate in this process until ``count`` samples are accepted (or ``max_attempts`` were planned); resumes from
    ``root``. -> the data set's counts plus ``ran_now`` / ``failed_now`` (this run).

    ``execute(prompt)`` runs one API prompt (ComfyUI in-process; raises on failure). ``root`` is the data-set folder
    the workflow's SaveMattingDataset node writes to (``folder`` relative to ComfyUI's output directory); while a
    sample runs that folder is captured (:func:`dataset.capture_samples`), so the node only prepares the sample and
    this function's writer (:func:`dataset.open_writer`, locked against other processes) commits it.
    """
    from ...factory import Plan, SerialPool
    from ...factory.comfy_worker import run_sample

    def make_prompt(sample):
        return build_prompt(template, checkpoint=checkpoint, subject=sample.subject, seed=sample.seed,
                            name=sample.name, folder=folder, steps=steps, size=size)

    def make_pool():
        return SerialPool(lambda sample: run_sample(execute, make_prompt(sample), sample.name, root, temp))

    from ...dataset import open_writer

    try:
        writer = open_writer(root)  # rolls back a sample a killed run left half-written
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from None
    try:
        return drive(writer, make_pool, Plan(prompts, seed), count, max_attempts, max_tries=max_tries,
                     progress=progress)
    finally:
        writer.close()


def check_counts(count: int, max_attempts: int | None) -> None:
    """--count in 1..MAX_COUNT and --max-attempts in 1..MAX_PLAN (hostile X6: 10^20 hung building the plan)."""
    from ...factory.plan import MAX_COUNT, MAX_PLAN

    if not 1 <= count <= MAX_COUNT:
        raise CLIError(f"--count: expected 1..{MAX_COUNT} accepted samples per run, got {count}")
    if max_attempts is not None and not 1 <= max_attempts <= MAX_PLAN:
        raise CLIError(f"--max-attempts: expected 1..{MAX_PLAN} samples per run, got {max_attempts}")


def drive(writer, make_pool, plan, count: int, max_attempts: int | None, *, max_tries: int = 3,
          progress: bool = True, log=None) -> dict:
    """The factory run on an open writer: the plan's pending samples (indices below ``max_attempts``, default
    3 x ``count``) on the pool ``make_pool()`` (started only if there is work), committed here in plan order, until
    ``count`` are accepted -> counts (``ran_now``, ``failed_now``: this run). CLIError for a bad count or a run that
    cannot go on (FactoryError)."""
    from ...dataset import QualityThresholds
    from ...factory import FactoryError, run_samples

    check_counts(count, max_attempts)
    limit = max_attempts if max_attempts is not None else 3 * count
    pending = plan.pending(limit, writer)
    needed = count - len(writer.committed)
    counts_now = {"ran_now": 0, "failed_now": 0}
    if needed <= 0 or not pending:  # nothing to do: no ComfyUI, no Ray
        return {**writer.counts, **counts_now}

    def commit(sample, prepared) -> bool:
        if getattr(prepared, "name", None) != sample.name:
            raise CLIError(f"sample {sample.name}: a worker returned {getattr(prepared, 'name', prepared)!r} instead")
        result = writer.commit_prepared(prepared)
        writer.write_stats(QualityThresholds(**prepared.thresholds))
        return result.accepted

    def fail(sample, reason: str, attempts: int) -> None:
        writer.record_failed(sample.name, reason, meta={"index": sample.index, "prompt": sample.subject,
                                                        "seed": sample.seed, "attempts": attempts})
        writer.write_stats()

    pool = make_pool()
    bar = None
    try:
        bar = _Progress(count, len(writer.committed), writer) if progress else None
        say = log or (bar.write if bar is not None else _stderr)
        summary = run_samples(pool, pending, commit, fail, needed=needed, max_tries=max_tries, log=say,
                              progress=bar.update if bar is not None else None)
    except FactoryError as exc:
        raise CLIError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
        pool.close()
    counts_now.update(ran_now=summary.ran, failed_now=summary.failed)
    return {**writer.counts, **counts_now}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """A tqdm bar of accepted samples, with rejected / failed counts and each worker's samples per second."""

    def __init__(self, count: int, initial: int, writer):
        from tqdm import tqdm

        self.count, self.writer = count, writer
        self.bar = tqdm(total=count, initial=min(initial, count), unit="sample", desc="accepted", dynamic_ncols=True,
                        file=sys.stderr)

    def write(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def update(self, summary) -> None:
        now = time.monotonic()
        self.bar.n = min(len(self.writer.committed), self.count)
        rates = " ".join(f"w{w}:{s.rate(now):.2f}/s" for w, s in sorted(summary.workers.items()))
        self.bar.set_postfix_str(f"rejected={len(self.writer.rejected)} failed={len(self.writer.failed)} {rates}",
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _workers(value: str) -> int | None:
    """``--workers``: a whole number >= 1 -> it, ``auto`` -> None (one per GPU); CLIError otherwise."""
    if value.strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise CLIError(f"--workers: expected a whole number >= 1 or 'auto', got {value!r}")
    return n


def ray_pool(args, template: dict, workers: int | None, gpus: float):
    """The RayPool of these arguments (started: cluster joined or started, actors booting); CLIError if not."""
    from ...factory import FactoryError
    from ...factory.ray_pool import RayPool, WorkerConfig, import_ray

    what = f"--workers {args.workers}" if not args.ray else "--ray"
    try:
        ray = import_ray(what)
    except FactoryError as exc:
        raise CLIError(str(exc)) from None
    config = WorkerConfig(comfyui=args.comfyui, cpu=args.cpu, extra_model_paths=args.extra_model_paths,
                          custom_nodes=tuple(args.custom_nodes), checkpoint=args.checkpoint)

    def make_prompt(sample):
        return build_prompt(template, checkpoint=args.checkpoint, subject=sample.subject, seed=sample.seed,
                            name=sample.name, folder=".", steps=args.steps, size=args.size)

    pool = RayPool(workers or 1, config, make_prompt, address=args.ray, gpus_per_worker=gpus,
                   cpus_per_worker=args.cpus_per_worker, max_restarts=args.worker_restarts, what=what)
    try:
        if workers is None:  # auto: one per GPU of the cluster, known once connected
            pool.connect()
            n = int(ray.cluster_resources().get("GPU", 0) // gpus) if gpus > 0 else 0
            if n < 1:
                raise FactoryError(f"--workers auto: the Ray cluster has no GPU to give each worker {gpus:g} "
                                   "(give --workers N for CPU workers)")
            pool.resize(n)
        pool.start()
    except FactoryError as exc:
        pool.close()
        raise CLIError(str(exc)) from None
    except BaseException:
        pool.close()
        raise
    _stderr(f"generate: {pool.describe()}")
    return pool


def check_out_folder(path: str, what: str = "--out") -> str:
    """``--out`` before anything is created: an existing folder, or a new one whose nearest existing parent is a
    writable folder -> its absolute path; CLIError otherwise."""
    out = os.path.abspath(path)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise CLIError(f"{what}: {out} exists and is not a folder")
        return out
    parent = os.path.dirname(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CLIError(f"{what}: cannot create {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{what}: cannot create {out}: {parent} is not writable")
    return out


def run(args) -> int:
    from ... import PACK_DIR
    from ...comfy_bootstrap import ComfyUIError, find_comfyui
    from ...dataset import open_writer
    from ...factory import Plan

    prompts = read_prompts(args.prompts)
    template = load_workflow(args.workflow or os.path.join(PACK_DIR, DEFAULT_WORKFLOW))
    if args.size is not None and (args.size < 64 or args.size % 8):
        raise CLIError(f"--size: expected a multiple of 8, at least 64, got {args.size}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps: expected at least 1, got {args.steps}")
    check_counts(args.count, args.max_attempts)
    if args.max_tries < 1:
        raise CLIError(f"--max-tries: expected at least 1, got {args.max_tries}")
    workers = _workers(args.workers)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (0.0 if args.cpu else 1.0)
    if not gpus >= 0:
        raise CLIError(f"--gpus-per-worker: expected a number >= 0, got {args.gpus_per_worker}")
    if not args.cpus_per_worker > 0:
        raise CLIError(f"--cpus-per-worker: expected a number > 0, got {args.cpus_per_worker}")
    if args.worker_restarts < 0:
        raise CLIError(f"--worker-restarts: expected a whole number >= 0, got {args.worker_restarts}")
    distributed = args.ray is not None or workers != 1
    if not args.ray:  # ComfyUI and the node packs are on this machine: check them before --out is created
        try:
            find_comfyui(args.comfyui, what="--comfyui")
        except ComfyUIError as exc:
            raise CLIError(str(exc)) from None
        for path in args.custom_nodes:
            if not os.path.exists(path):
                raise CLIError(f"--custom-nodes: no such file or folder {path}")
        if args.extra_model_paths and not os.path.isfile(args.extra_model_paths):
            raise CLIError(f"--extra-model-paths: no such file {args.extra_model_paths}")
    out = check_out_folder(args.out)
    created = not os.path.exists(out)
    # Take the folder (its lock) before ComfyUI or Ray start: a second run on it is refused at once, not minutes later.
    try:
        writer = open_writer(out)
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from None
    try:
        if args.retry_failed:
            again = writer.forget_failed()
            if again:
                _stderr(f"generate: {len(again)} samples recorded as failed will be made again")
        if distributed:
            def make_pool():
                return ray_pool(args, template, workers, gpus)
        else:
            def make_pool():
                return in_process_pool(args, template)
        try:
            counts = drive(writer, make_pool, Plan(prompts, args.seed), args.count, args.max_attempts,
                           max_tries=args.max_tries)
        except KeyboardInterrupt:
            _stderr(f"generate: stopped; {len(writer.committed)} accepted in {out} (rerun the same command to "
                    "resume)")
            raise
    finally:
        if created:
            writer.discard_if_empty()  # a run that failed before its first sample leaves no empty folder
        else:
            writer.close()
    reasons = ", ".join(f"{k[len('rejected_'):]} {v}" for k, v in counts.items() if k.startswith("rejected_"))
    failed = counts.get("failed", 0)
    print(f"{out}: {counts['accepted']} accepted, {counts['rejected']} rejected"
          + (f" ({reasons})" if reasons else "") + (f", {failed} failed (failed.jsonl)" if failed else "")
          + f"; {counts['ran_now']} generated in this run")
    if counts["accepted"] < args.count:
        print(f"stopped after {args.max_attempts or 3 * args.count} attempts with {counts['accepted']} of "
              f"{args.count} accepted (raise --max-attempts, or look at rejected.jsonl"
              + (" and failed.jsonl" if failed else "") + ")", file=sys.stderr)
        return 1
    return 0


def in_process_pool(args, template: dict):
    """ComfyUI in this process (booted now) as the factory's one worker; CLIError if it cannot start."""
    import shutil

    from ...factory import SerialPool
    from ...factory.comfy_worker import boot, run_sample

    try:
        comfy = boot(args.comfyui, cpu=args.cpu, extra_model_paths=args.extra_model_paths,
                     custom_nodes=args.custom_nodes, checkpoint=args.checkpoint)
    except ValueError as exc:
        raise CLIError(str(exc)) from None

    def run_one(sample):
        prompt = build_prompt(template, checkpoint=args.checkpoint, subject=sample.subject, seed=sample.seed,
                              name=sample.name, folder=".", steps=args.steps, size=args.size)
        return run_sample(comfy.runner.run, prompt, sample.name, comfy.root, comfy.temp)

    pool = SerialPool(run_one, f"in this process, {comfy.device}")
    close = pool.close

    def close_and_clean():
        close()
        shutil.rmtree(comfy.workdir, ignore_errors=True)

    pool.close = close_and_clean
    return pool
