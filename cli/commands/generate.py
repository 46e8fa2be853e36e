"""`python -m diffumatting generate`: the data factory. Runs the pack's generation workflow headless, in-process,
inside a ComfyUI installation, and writes a matting data set (see SaveMattingDataset) with resume.

Sample ``i`` always uses prompt ``i mod P`` and seed ``seed + i`` and is named ``gen_<i:06d>``; a sample whose name is
already in the data set (written, or rejected by the quality gate) is never run again, so a stopped run resumes
where it stopped without redoing or duplicating samples. ``--count`` is the number of accepted samples wanted;
``--max-attempts`` bounds the work when the gate rejects many.
"""

from __future__ import annotations

import copy
import json
import os
import sys

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
    p.add_argument("--count", required=True, type=int, metavar="N", help="accepted samples wanted")
    p.add_argument("--out", required=True, metavar="DIR", help="data-set folder (created; resumed if it exists)")
    p.add_argument("--workflow", default=None, metavar="FILE",
                   help=f"API-format workflow with one {DATASET_NODE} node (default: the pack's {DEFAULT_WORKFLOW})")
    p.add_argument("--seed", type=int, default=0, help="seed of sample 0; sample i uses seed + i (default 0)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="stop after this many samples generated in total, accepted or not (default 3 x count)")
    p.add_argument("--steps", type=int, default=None, help="override the sampler's steps")
    p.add_argument("--size", type=int, default=None, metavar="PX", help="override width and height (multiple of 8)")
    p.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU")
    p.add_argument("--extra-model-paths", default=None, metavar="YAML", help="an extra_model_paths.yaml to load")
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """Non-empty, non-comment lines of a prompts file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            prompts = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
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
    try:
        with open(path, encoding="utf-8") as f:
            wf = json.load(f)
    except (OSError, ValueError) as exc:
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
                size: int | None = None, progress: bool = True) -> dict:
    """Generate until ``count`` samples are accepted (or ``max_attempts`` were made); resumes from ``root``.

    ``execute(prompt)`` runs one API prompt (ComfyUI in-process). ``root`` is the data-set folder the workflow's
    SaveMattingDataset node writes to (``folder`` relative to ComfyUI's output directory). The factory owns the
    folder's one writer (:func:`dataset.open_writer`: locked against other processes); the node, running in this
    process, writes through that same writer, so what it wrote is known here without re-reading any file.
    Returns the counts.
    """
    from ...dataset import open_writer

    if count < 1:
        raise CLIError(f"--count: expected at least 1, got {count}")
    limit = max_attempts if max_attempts is not None else 3 * count
    if limit < 1:
        raise CLIError(f"--max-attempts: expected at least 1, got {limit}")
    try:
        writer = open_writer(root)  # rolls back a sample a killed run left half-written
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from None
    bar = None
    ran = 0
    try:
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=count, initial=min(len(writer.committed), count), unit="sample", desc="accepted",
                       dynamic_ncols=True, file=sys.stderr)
        for i in range(limit):
            if len(writer.committed) >= count:
                break
            name = f"gen_{i:06d}"
            if name in writer:
                continue
            prompt = build_prompt(template, checkpoint=checkpoint, subject=prompts[i % len(prompts)], seed=seed + i,
                                  name=name, folder=folder, steps=steps, size=size)
            execute(prompt)
            ran += 1
            if name not in writer:  # the node shares this writer: its sample is in it, accepted or rejected
                raise CLIError(f"sample {name}: the workflow ran but wrote nothing to {writer.root} "
                               f"(is its {DATASET_NODE} node connected and its folder '{folder}'?)")
            if bar is not None:
                bar.n = min(len(writer.committed), count)
                bar.set_postfix(rejected=len(writer.rejected), refresh=False)
                bar.refresh()
        counts = writer.counts
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    counts["ran_now"] = ran
    return counts


# ------------------------------------------------------------------------------------------------------------------
# ComfyUI in-process


def start(path: str, cpu: bool, output_dir: str, extra_model_paths: str | None = None):
    """ComfyUI from ``path`` (CPU if asked) with this pack -> (namespace, ``execute(prompt)``); errors are CLIError."""
    from ...comfy_bootstrap import ComfyUIError, PromptRunner, start_comfyui

    try:
        ns = start_comfyui(path, cpu=True if cpu else None, output_dir=output_dir,
                           extra_model_paths=extra_model_paths, what="--comfyui")
    except ComfyUIError as exc:
        raise CLIError(str(exc)) from None
    runner = PromptRunner(ns)

    def execute(prompt: dict) -> None:
        try:
            runner.run(prompt)
        except ComfyUIError as exc:
            raise CLIError(str(exc)) from None

    return ns, execute


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

    prompts = read_prompts(args.prompts)
    template = load_workflow(args.workflow or os.path.join(PACK_DIR, DEFAULT_WORKFLOW))
    if args.size is not None and (args.size < 64 or args.size % 8):
        raise CLIError(f"--size: expected a multiple of 8, at least 64, got {args.size}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps: expected at least 1, got {args.steps}")
    if args.count < 1:
        raise CLIError(f"--count: expected at least 1, got {args.count}")
    if args.max_attempts is not None and args.max_attempts < 1:
        raise CLIError(f"--max-attempts: expected at least 1, got {args.max_attempts}")
    try:
        find_comfyui(args.comfyui, what="--comfyui")  # before --out is created
    except ComfyUIError as exc:
        raise CLIError(str(exc)) from None
    out = check_out_folder(args.out)
    created = not os.path.exists(out)
    # Take the folder (its lock) before ComfyUI starts: a second run on it is refused at once, not minutes later.
    try:
        writer = open_writer(out)
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from None
    try:
        ns, execute = start(args.comfyui, args.cpu, out, args.extra_model_paths)
        available = ns.folder_paths.get_filename_list("checkpoints")
        if args.checkpoint not in available:
            listing = ", ".join(available[:10]) or "none"
            raise CLIError(f"--checkpoint: {args.checkpoint!r} is not in ComfyUI's checkpoints folder "
                           f"(found: {listing})")
        counts = run_factory(execute, template, prompts, args.count, out, ".",
                             checkpoint=args.checkpoint, seed=args.seed, max_attempts=args.max_attempts,
                             steps=args.steps, size=args.size)
    finally:
        if created:
            writer.discard_if_empty()  # a run that failed before its first sample leaves no empty folder
        else:
            writer.close()
    reasons = ", ".join(f"{k[len('rejected_'):]} {v}" for k, v in counts.items() if k.startswith("rejected_"))
    print(f"{out}: {counts['accepted']} accepted, {counts['rejected']} rejected"
          + (f" ({reasons})" if reasons else "") + f"; {counts['ran_now']} generated in this run")
    if counts["accepted"] < args.count:
        print(f"stopped after {args.max_attempts or 3 * args.count} attempts with {counts['accepted']} of "
              f"{args.count} accepted (raise --max-attempts, or look at rejected.jsonl)", file=sys.stderr)
        return 1
    return 0
