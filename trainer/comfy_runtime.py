"""Import ComfyUI's model code from ``COMFYUI_PATH`` outside the node graph, and load checkpoints with it.

The trainer runs as ``python -m diffumatting train``: ComfyUI is not running, so its folder is put on ``sys.path``
here (first, so its top-level ``nodes``/``utils`` modules win) and our repository root is taken off it (our
``nodes/`` package would shadow ComfyUI's ``nodes.py``). ``--cpu`` must be decided before
``comfy.model_management`` is first imported; inside a running ComfyUI (or the integration tests) the modules are
already imported and are used as they are.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

__all__ = ["import_comfy", "load_checkpoint", "comfy_available"]

_REPO_ROOT = Path(__file__).resolve().parents[1]


def comfy_available() -> bool:
    """True when ``comfy.model_management`` is already importable (inside ComfyUI or after :func:`import_comfy`)."""
    return "comfy.model_management" in sys.modules


def _accelerator_available() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def import_comfy(comfyui_path: str | os.PathLike | None = None, cpu: bool | None = None) -> types.SimpleNamespace:
    """-> namespace with ComfyUI's ``model_management``, ``sd``, ``utils``, ``lora`` modules and its ``root``.

    ``comfyui_path`` defaults to ``$COMFYUI_PATH``. ``cpu=True`` forces ComfyUI's ``--cpu`` mode, ``None`` picks it
    when torch sees no accelerator (only effective before ComfyUI's model management is first imported). Raises ``ValueError`` when no ComfyUI is found.
    """
    if not comfy_available():
        path = comfyui_path or os.environ.get("COMFYUI_PATH", "")
        if not path:
            raise ValueError(
                "COMFYUI_PATH: the trainer uses ComfyUI's model code; set COMFYUI_PATH=/path/to/ComfyUI "
                "(or pass --comfyui PATH)"
            )
        root = Path(path).expanduser().resolve()
        if not (root / "comfy" / "model_management.py").is_file():
            raise ValueError(f"COMFYUI_PATH: {root} is not a ComfyUI folder (no comfy/model_management.py)")
        # our repository root must not shadow ComfyUI's top-level modules (`nodes`, `utils`)
        sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _REPO_ROOT]
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        for name in ("nodes", "utils"):
            mod = sys.modules.get(name)
            if mod is not None and str(_REPO_ROOT) in str(getattr(mod, "__file__", "") or ""):
                del sys.modules[name]
        from comfy.cli_args import args  # noqa: I001  (must precede comfy.model_management)

        if cpu is None:
            cpu = not _accelerator_available()  # a CUDA build of torch on a machine without a GPU
        if cpu:
            args.cpu = True
    mm = importlib.import_module("comfy.model_management")
    sd = importlib.import_module("comfy.sd")
    utils = importlib.import_module("comfy.utils")
    lora = importlib.import_module("comfy.lora")
    root = Path(sd.__file__).resolve().parents[1]
    return types.SimpleNamespace(model_management=mm, sd=sd, utils=utils, lora=lora, root=root)


def load_checkpoint(path: str | os.PathLike, comfyui_path: str | os.PathLike | None = None, cpu: bool | None = None):
    """checkpoint file -> (MODEL ModelPatcher, CLIP, VAE) via ``comfy.sd.load_checkpoint_guess_config``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: {path} is not a file")
    comfy = import_comfy(comfyui_path, cpu=cpu)
    try:
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True, embedding_directory=None)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint: {path} could not be loaded by ComfyUI: {str(exc).splitlines()[0]}") from None
    model, clip, vae = out[0], out[1], out[2]
    if model is None or clip is None or vae is None:
        raise ValueError(f"checkpoint: {path} lacks a UNet, CLIP or VAE (the trainer needs a full SD checkpoint)")
    return model, clip, vae
