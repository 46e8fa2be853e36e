"""Training checkpoints: model + optimizer + scheduler + RNG state (and any JSON-able extras) in one file.

Format: one safetensors file; every tensor of the state tree is a safetensors tensor, everything else (numbers,
strings, lists, tuples, dicts with any keys) is JSON in the metadata field ``diffumatting.state`` with
placeholders for the tensors. ``format``/``version``/``kind`` identify the file, so a foreign or older file is
refused with a message that names it.

Writes are atomic and durable: the bytes go to a hidden temporary file in the same folder
(``.<name>.<random>.partial.safetensors``), which is fsynced, renamed over the checkpoint, and the folder is
fsynced. A run killed during a save leaves the previous checkpoint intact plus, at worst, its temporary file;
:func:`clean_stale` (called by the trainers when they start) removes those.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import torch

from ..common.files import atomic_path, fsync_dir, name_max, temp_prefix

FORMAT = "diffumatting.train_checkpoint"
VERSION = 2
_STATE = "diffumatting.state"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, foreign, from an older version or from another run set-up.

    ``reason``: "unreadable" (truncated or garbage), "format" (foreign or older format), "version", "kind",
    "write" (could not be written) or "mismatch" (made for another run set-up)."""

    def __init__(self, message: str, reason: str = "mismatch"):
        super().__init__(message)
        self.reason = reason


# ---- the state tree <-> (tensors, JSON)

def _encode(obj, path: str, tensors: dict) -> object:
    if torch.is_tensor(obj):
        key = path or "tensor"
        while key in tensors:
            key += "#"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}.{k}" if path else k, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, f"{path}.key", tensors), _encode(v, f"{path}.{k}", tensors)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state: {path or 'value'} is a {type(obj).__name__}, which a checkpoint cannot hold")


def _decode(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def to_bytes(state: dict, kind: str) -> bytes:
    """state tree (tensors anywhere; else JSON types, tuples, dicts with any keys) -> safetensors file bytes."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    meta = {"format": FORMAT, "version": str(VERSION), "kind": kind, _STATE: json.dumps(tree)}
    return save(tensors, metadata=meta)


# ---- capture / restore

def capture(model: torch.nn.Module | None = None, optimizer=None, scheduler=None, scaler=None,
            generators: dict[str, torch.Generator] | None = None, torch_rng: bool = True, **info) -> dict:
    """The training state as a tree: ``state_dict()`` of model/optimizer/scheduler/grad scaler, the states of the
    named generators and of torch's global RNG, plus ``info`` (JSON-able extras such as step, config, log)."""
    state: dict = {"info": info}
    if model is not None:
        state["model"] = model.state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    rng = {name: g.get_state() for name, g in (generators or {}).items()}
    if torch_rng:
        rng["torch"] = torch.get_rng_state()
    state["rng"] = rng
    return state


def restore(state: dict, model: torch.nn.Module | None = None, optimizer=None, scheduler=None, scaler=None,
            generators: dict[str, torch.Generator] | None = None, torch_rng: bool = True) -> dict:
    """Load a :func:`capture` tree into the given objects (strictly) -> its ``info`` dict."""
    for name, obj in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is not None:
            if name not in state:
                raise CheckpointError(f"checkpoint: holds no {name} state", "mismatch")
            obj.load_state_dict(state[name])
    rng = state.get("rng", {})
    for name, g in (generators or {}).items():
        if name not in rng:
            raise CheckpointError(f"checkpoint: holds no state of the random generator {name!r}")
        g.set_state(rng[name])
    if torch_rng and "torch" in rng:
        torch.set_rng_state(rng["torch"])
    return dict(state.get("info", {}))


# ---- files

def write_bytes_durably(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename, fsync of the folder.
    OSError (disk full, read-only) leaves ``path`` as it was and no temporary file."""
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def save(path: str | os.PathLike, state: dict, kind: str) -> Path:
    """Write a state tree (see :func:`capture`) to ``path`` atomically and durably -> the path.

    OSError (disk full, read-only folder) becomes a ValueError naming the file and the reason, with the previous
    checkpoint left as it was."""
    path = Path(path)
    data = to_bytes(state, kind)
    try:
        write_bytes_durably(path, data)
    except OSError as exc:
        raise CheckpointError(f"checkpoint: could not write {path}: {exc.strerror or exc}", "write") from None
    return path


def load(path: str | os.PathLike, kind: str, hint: str = "pass --no-resume or delete it") -> dict:
    """checkpoint file -> its state tree. CheckpointError naming the file for an unreadable, foreign, older-format
    or other-kind file (``hint`` says what to do; it ends the message)."""
    from safetensors import safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or garbage files
        raise CheckpointError(f"checkpoint: {path} is not readable ({str(exc).splitlines()[0] if str(exc) else exc}); "
                              f"{hint}", "unreadable") from None
    if meta.get("format") != FORMAT:
        old = "step" in meta or "diffumatting.train_state" in meta
        what = "was written by an older version of DiffuMatting (another checkpoint format)" if old else \
            "is not a DiffuMatting training checkpoint"
        raise CheckpointError(f"checkpoint: {path} {what}; {hint}", "format")
    try:
        version = int(meta.get("version", "0"))
    except ValueError:
        version = 0
    if version != VERSION:
        raise CheckpointError(f"checkpoint: {path} has format version {meta.get('version')!r}, this pack reads "
                              f"version {VERSION}; {hint}", "version")
    if meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint: {path} is a {meta.get('kind')!r} checkpoint, expected {kind!r}; {hint}", "kind")
    try:
        return _decode(json.loads(meta[_STATE]), tensors)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: {path} has a damaged state record ({exc}); {hint}", "unreadable") from None


def stale_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files a killed save of ``path`` can leave beside it (``.<name>.*.partial*``)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    import glob

    # the same prefix atomic_path gives (a long name is cut short there, hostile X1)
    prefix = temp_prefix(path.name, path.suffix, name_max(folder))
    return sorted(folder.glob(glob.escape(prefix) + "*.partial*"))


def clean_stale(path: str | os.PathLike) -> int:
    """Remove the temporary files of killed saves of ``path`` -> how many were removed."""
    n = 0
    for p in stale_files(path):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def check_writable(folder: str | os.PathLike, need_bytes: int = 0, what: str = "out") -> None:
    """Up-front check of an output folder (created if missing): a folder, writable (a probe file is created and
    removed) and with about ``need_bytes`` free. ValueError naming ``what`` and the reason otherwise."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: {folder} is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".diffumatting-probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        reason = "it is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else \
            (exc.strerror or str(exc))
        raise ValueError(f"{what}: cannot write in {folder}: {reason}") from None
    if need_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise ValueError(f"{what}: {folder} has {free / 2**20:.1f} MiB free, the run needs about "
                             f"{need_bytes / 2**20:.1f} MiB (checkpoints and the final file)")


def state_nbytes(*modules: torch.nn.Module, copies: int = 1) -> int:
    """Bytes of the modules' parameters and buffers, times ``copies`` (e.g. 3 = weights + two Adam moments)."""
    n = sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    return n * copies
