"""The one ComfyUI bootstrap: ComfyUI imported in this process from its folder, outside a running ComfyUI.

Used by every command that needs ComfyUI's code (``generate``, ``train``, ``train-head --vae``), by the benchmarks
and by the integration tests. Inside a running ComfyUI nothing here is called: its modules are already imported.

This is the only module of the pack that edits ``sys.path``, and only here: ComfyUI's folder goes first (its
top-level modules ``nodes``, ``utils``, ``folder_paths`` are imported by those names) and the pack's own folder
is taken off (its ``nodes/`` package would shadow ComfyUI's ``nodes.py``). ComfyUI's ``--cpu`` switch is decided
before ``comfy.model_management`` is first imported; ComfyUI is process-wide state, so it is started once per
process and later calls get the same namespace (their folders must agree, or they are refused).
"""

from __future__ import annotations

import asyncio
import os
import sys
import types
import uuid
from pathlib import Path

__all__ = ["ComfyUIError", "PromptError", "find_comfyui", "import_comfy", "start_comfyui", "PromptRunner",
           "load_checkpoint", "load_vae", "PACK_ROOT"]

PACK_ROOT = Path(__file__).resolve().parent
_STARTED: dict[str, types.SimpleNamespace] = {}


class ComfyUIError(ValueError):
    """ComfyUI is missing, not a ComfyUI folder, or a prompt failed: the message names what and where."""


def find_comfyui(path: str | os.PathLike | None = None, what: str = "COMFYUI_PATH") -> Path:
    """``path`` (or ``$COMFYUI_PATH``) -> the resolved ComfyUI folder; ComfyUIError naming ``what`` when it is not one."""
    path = path or os.environ.get("COMFYUI_PATH", "")
    if not path:
        raise ComfyUIError(f"{what}: this needs ComfyUI's code; set COMFYUI_PATH=/path/to/ComfyUI (a ComfyUI 0.8 "
                           "checkout whose requirements are installed in this Python)")
    root = Path(path).expanduser().resolve()
    if not (root / "comfy" / "model_management.py").is_file():
        raise ComfyUIError(f"{what}: {root} is not a ComfyUI folder (no comfy/model_management.py)")
    return root


def _accelerator_available() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def _put_comfyui_first(root: Path) -> None:
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != PACK_ROOT]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for name in ("nodes", "utils"):  # imported from the pack's folder earlier (e.g. `python -m` from the root)
        module = sys.modules.get(name)
        if module is not None and str(PACK_ROOT) in str(getattr(module, "__file__", "") or ""):
            del sys.modules[name]


def import_comfy(path: str | os.PathLike | None = None, cpu: bool | None = None,
                 what: str = "COMFYUI_PATH") -> types.SimpleNamespace:
    """-> namespace(root, model_management, sd, utils, lora): ComfyUI's model code, no nodes, no server.

    ``cpu=True`` forces ComfyUI's ``--cpu`` mode, ``None`` picks it when torch sees no accelerator (a CUDA build of
    torch on a machine without a GPU); either only takes effect before ``comfy.model_management`` is imported.
    """
    import importlib

    if "comfy.model_management" not in sys.modules:
        root = find_comfyui(path, what)
        _put_comfyui_first(root)
        from comfy.cli_args import args  # must precede comfy.model_management

        args.cpu = args.cpu or (not _accelerator_available() if cpu is None else cpu)
        args.disable_api_nodes = True
    mm = importlib.import_module("comfy.model_management")
    sd = importlib.import_module("comfy.sd")
    utils = importlib.import_module("comfy.utils")
    lora = importlib.import_module("comfy.lora")
    root = Path(sd.__file__).resolve().parents[1]
    return types.SimpleNamespace(root=root, model_management=mm, sd=sd, utils=utils, lora=lora)


def start_comfyui(path: str | os.PathLike | None = None, cpu: bool | None = None, *,
                  output_dir: str | os.PathLike | None = None, temp_dir: str | os.PathLike | None = None,
                  input_dir: str | os.PathLike | None = None, user_dir: str | os.PathLike | None = None,
                  model_folders: dict[str, str | os.PathLike] | None = None,
                  extra_model_paths: str | os.PathLike | None = None,
                  what: str = "COMFYUI_PATH") -> types.SimpleNamespace:
    """ComfyUI with its built-in nodes and this pack (loaded by ComfyUI's own ``load_custom_node``), no server.

    -> namespace(root, nodes, execution, folder_paths, pack, core_ids, node_classes). Folders left ``None`` keep
    ComfyUI's defaults (``temp_dir`` defaults to a fresh temporary folder); ``model_folders`` maps a model kind
    (``checkpoints``, ``vae``, ...) to an extra folder registered as that kind's default.
    """
    if "ns" in _STARTED:
        ns = _STARTED["ns"]
        if output_dir is not None and Path(ns.folder_paths.get_output_directory()).resolve() != Path(output_dir).resolve():
            raise ComfyUIError(f"output folder: ComfyUI already runs in this process with output folder "
                               f"{ns.folder_paths.get_output_directory()}, not {output_dir}")
        return ns
    import tempfile

    comfy = import_comfy(path, cpu=cpu, what=what)
    import utils.extra_config  # noqa: F401  (before `nodes`: nodes.py puts comfy/ first on sys.path)
    import folder_paths

    root = comfy.root
    for yaml_path in (root / "extra_model_paths.yaml", extra_model_paths):
        if yaml_path and os.path.isfile(yaml_path):
            utils.extra_config.load_extra_path_config(str(yaml_path))
        elif yaml_path is not None and yaml_path == extra_model_paths:
            raise ComfyUIError(f"extra model paths: no such file {extra_model_paths}")
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="diffumatting-comfyui-")
    for folder, setter in ((output_dir, folder_paths.set_output_directory), (temp_dir, folder_paths.set_temp_directory),
                           (input_dir, folder_paths.set_input_directory), (user_dir, folder_paths.set_user_directory)):
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            setter(str(folder))
    for kind, folder in (model_folders or {}).items():
        os.makedirs(folder, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(folder), is_default=True)

    import execution
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    core_ids = set(nodes.NODE_CLASS_MAPPINGS)
    if not asyncio.run(nodes.load_custom_node(str(PACK_ROOT), ignore=core_ids)):
        raise ComfyUIError("ComfyUI could not import the DiffuMatting pack (the traceback is in the log above)")
    ns = types.SimpleNamespace(root=root, nodes=nodes, execution=execution, folder_paths=folder_paths,
                               pack=sys.modules[str(PACK_ROOT).replace(".", "_x_")], core_ids=core_ids,
                               node_classes=nodes.NODE_CLASS_MAPPINGS)
    _STARTED["ns"] = ns
    return ns


_LOADED_PACKS: set[str] = set()


def load_node_packs(ns, paths, what: str = "--custom-nodes") -> None:
    """Load ComfyUI node packs (folders or .py files) with ComfyUI's own loader, once each; nodes already registered
    are kept. ``ComfyUIError`` (a ValueError) naming ``what`` when a pack is missing or fails to import."""
    for path in paths:
        real = os.path.realpath(path)
        if real in _LOADED_PACKS:
            continue
        if not (os.path.isdir(real) and os.path.isfile(os.path.join(real, "__init__.py"))) and \
                not (os.path.isfile(real) and real.endswith(".py")):
            raise ComfyUIError(f"{what}: {path} is not a ComfyUI node pack (a folder with __init__.py, or a .py "
                             "file)")
        if not asyncio.run(ns.nodes.load_custom_node(real, ignore=set(ns.node_classes))):
            raise ComfyUIError(f"{what}: ComfyUI could not import {path} (its traceback is in ComfyUI's log)")
        _LOADED_PACKS.add(real)


class _NoServer:
    """What PromptExecutor needs of PromptServer when no server runs; keeps the messages it was sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class PromptError(ComfyUIError):
    """An API prompt failed ComfyUI's validation (``kind="validation"``) or its execution (``"execution"``)."""

    def __init__(self, message: str, kind: str, detail=None):
        super().__init__(message)
        self.kind = kind
        self.detail = detail


class PromptRunner:
    """Runs API-format prompts with ComfyUI's own ``validate_prompt`` and ``PromptExecutor`` (no caching)."""

    def __init__(self, ns: types.SimpleNamespace):
        self.execution = ns.execution
        self.server = _NoServer()
        self.executor = ns.execution.PromptExecutor(self.server, cache_type=ns.execution.CacheType.CLASSIC,
                                                    cache_args={"lru": 0, "ram": 0})

    def validate(self, prompt: dict) -> list:
        """-> the output node ids to execute; PromptError (kind "validation") with ComfyUI's messages."""
        ok, error, outputs, node_errors = asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        if not ok:
            details = "; ".join(f"{nid}: {e.get('message', '')} {e.get('details', '')}".strip()
                                for nid, errs in (node_errors or {}).items() for e in errs.get("errors", []))
            message = error.get("message", error) if isinstance(error, dict) else error
            raise PromptError(f"the workflow is not valid here: {message}" + (f" ({details})" if details else ""),
                              "validation", {"error": error, "node_errors": node_errors})
        return outputs

    def run(self, prompt: dict, extra_data: dict | None = None) -> dict:
        """Validate and execute; -> ComfyUI's history result. KeyboardInterrupt when interrupted, PromptError on failure."""
        outputs = self.validate(prompt)
        self.server.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), extra_data=extra_data or {}, execute_outputs=outputs)
        if not self.executor.success:
            if any(event == "execution_interrupted" for event, _ in self.executor.status_messages):
                raise KeyboardInterrupt
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            first = errors[0] if errors else {}
            raise PromptError(f"the workflow failed in {first.get('node_type', '?')}: "
                              f"{str(first.get('exception_message', 'unknown error')).strip()}", "execution",
                              first or self.executor.status_messages)
        return self.executor.history_result


def load_checkpoint(path: str | os.PathLike, comfyui_path: str | os.PathLike | None = None, cpu: bool | None = None,
                    what: str = "checkpoint"):
    """checkpoint file -> (MODEL ModelPatcher, CLIP, VAE) with ``comfy.sd.load_checkpoint_guess_config``.

    ValueError naming ``what`` and the file (one line) when ComfyUI cannot load it: a pickle ``.ckpt`` its safe
    loader refuses, a text or truncated ``.safetensors``, an unknown model type."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: {path} is not a file")
    comfy = import_comfy(comfyui_path, cpu=cpu)
    try:
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True, embedding_directory=None)
    except Exception as exc:  # torch's UnpicklingError, safetensors' SafetensorError, RuntimeError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{what}: {path} could not be loaded by ComfyUI ({type(exc).__name__}: {first})") from None
    model, clip, vae = out[0], out[1], out[2]
    if model is None or clip is None or vae is None:
        raise ValueError(f"{what}: {path} lacks a UNet, CLIP or VAE (the trainer needs a full SD checkpoint)")
    return model, clip, vae


def load_vae(path: str | os.PathLike, comfyui_path: str | os.PathLike | None = None, cpu: bool | None = None,
             what: str = "vae"):
    """VAE or full checkpoint file -> ComfyUI ``comfy.sd.VAE`` (safe_load, ``first_stage_model.`` prefix stripped)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: {path} does not exist")
    comfy = import_comfy(comfyui_path, cpu=cpu, what=what)
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    if any(k.startswith("first_stage_model.") for k in sd):
        sd = comfy.utils.state_dict_prefix_replace(sd, {"first_stage_model.": ""}, filter_keys=True)
    return comfy.sd.VAE(sd=sd)
