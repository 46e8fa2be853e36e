"""One factory worker's ComfyUI: booted once per process (the pack's one bootstrap), runs planned samples and hands
them back prepared, never writing the data set.

The same code serves the in-process path (``generate --workers 1``) and every Ray worker. ComfyUI's output folder is
a private folder of the worker; while a sample runs, that folder is captured (:func:`dataset.capture_samples`), so
the workflow's SaveMattingDataset node only scores and encodes the sample, and the driver's one writer commits it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import types
from collections.abc import Callable, Sequence

from .scheduler import ERROR, FATAL, TaskFailure

def boot(comfyui: str, *, cpu: bool, workdir: str | None = None, extra_model_paths: str | None = None,
         custom_nodes: Sequence[str] = (), checkpoint: str | None = None) -> types.SimpleNamespace:
    """ComfyUI from ``comfyui`` with this pack (and the node packs ``custom_nodes``) in this process ->
    namespace(ns, runner, root, temp, device); ``ValueError`` naming the option (``--comfyui``, ``--custom-nodes``,
    ``--checkpoint``, ``--extra-model-paths``) when something is missing here."""
    from ..comfy_bootstrap import PromptRunner, import_comfy, load_node_packs, start_comfyui

    made = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="diffumatting-worker-")
    try:
        output, temp = os.path.join(workdir, "output"), os.path.join(workdir, "temp")
        ns = start_comfyui(comfyui, cpu=True if cpu else None, output_dir=output, temp_dir=temp,
                           extra_model_paths=extra_model_paths, what="--comfyui")
        load_node_packs(ns, custom_nodes)
        if checkpoint is not None:
            available = ns.folder_paths.get_filename_list("checkpoints")
            if checkpoint not in available:
                listing = ", ".join(available[:10]) or "none"
                raise ValueError(f"--checkpoint: {checkpoint!r} is not in ComfyUI's checkpoints folder (found: "
                                 f"{listing})")
        device = str(import_comfy(comfyui).model_management.get_torch_device())
    except BaseException:
        if made:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return types.SimpleNamespace(ns=ns, runner=PromptRunner(ns), workdir=workdir,
                                 root=os.path.realpath(ns.folder_paths.get_output_directory()), temp=temp,
                                 device=device)


def run_sample(execute: Callable[[dict], object], prompt: dict, name: str, root: str, temp: str | None = None):
    """Run one API prompt whose SaveMattingDataset node writes sample ``name`` to folder ``root`` -> the sample's
    :class:`dataset.PreparedSample`, or a :class:`TaskFailure` ("fatal" for a workflow ComfyUI refuses to run or one
    that writes something else, "error" when this sample failed). Nothing is written to ``root``."""
    from ..dataset import capture_samples

    try:
        with capture_samples(root) as capture:
            try:
                execute(prompt)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure of one sample is reported, not raised
                kind = FATAL if getattr(exc, "kind", None) == "validation" else ERROR
                return TaskFailure(kind, str(exc).strip() or type(exc).__name__)
        written = [p.name for p in capture.samples]
    finally:
        if temp:
            _clear(temp)  # ComfyUI's previews of this sample (PreviewRGBA): nobody looks at them headless
    if written != [name]:
        got = ", ".join(written) or "nothing"
        return TaskFailure(FATAL, f"sample {name}: the workflow ran but wrote {got} (it needs one "
                                  "DiffuMattingSaveMattingDataset node, connected, writing one sample: batch_size 1)")
    return capture.samples[0]


def _clear(folder: str) -> None:
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
