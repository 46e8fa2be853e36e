"""DiffuMatting for ComfyUI: generate arbitrary objects with matting-level transparency.

ComfyUI imports this folder as a package under its file-system path, so everything inside the pack uses
relative imports and nothing here touches ``sys.path``, the network or the server object at import time.
The V3 entry point is :func:`comfy_entrypoint`; ComfyUI calls it after importing the module.

Outside ComfyUI the same folder is the installed package ``diffumatting`` (``pip install -e .`` maps the repository
root to that name, see pyproject.toml): ``python -m diffumatting``, the tests and the benchmarks import
``diffumatting.<package>``, the very code ComfyUI loads as ``<folder>.<package>``.
"""

import os as _os

__version__ = "0.1.0"
MODELS_FOLDER = "diffumatting"
PACK_DIR = _os.path.dirname(_os.path.abspath(__file__))  # the repository root: weights/, workflows/, assets/
# The files the example workflows load (LoadImage / LoadVideo), by their name in ComfyUI's input folder -> the file
# in the pack (assets/make_demo.py, assets/make_examples.py make them).
EXAMPLE_INPUTS = {
    "diffumatting_example_greenscreen.png": "assets/demo_greenscreen.png",
    "diffumatting_example_background.png": "assets/examples/background.png",
    "diffumatting_example_control.png": "assets/examples/control.png",
    "diffumatting_example_background.mp4": "assets/examples/background.mp4",
    "diffumatting_example_object_rgba.png": "assets/examples/object_rgba.png",  # the round-trip templates (RGBA)
}


def register_model_folder() -> None:
    """Register ``models/diffumatting`` for matting heads and green-canvas LoRAs (safetensors).

    A user's ``extra_model_paths.yaml`` may already have created the entry (with an empty extension set, which
    ComfyUI reads as "any file"); keep their paths and add ours, restricted to model file extensions.
    """
    import os

    import folder_paths  # ComfyUI's top-level module; only importable inside ComfyUI

    default_dir = os.path.join(folder_paths.models_dir, MODELS_FOLDER)
    if MODELS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = ([default_dir], set(folder_paths.supported_pt_extensions))
        return
    paths, extensions = folder_paths.folder_names_and_paths[MODELS_FOLDER]
    if default_dir not in paths:
        folder_paths.add_model_folder_path(MODELS_FOLDER, default_dir)
        paths, extensions = folder_paths.folder_names_and_paths[MODELS_FOLDER]
    if not extensions:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def install_example_inputs(input_dir: str) -> list[str]:
    """Copy the example workflows' input files into ``input_dir`` where missing -> the names copied.

    A file of that name already there is never touched (the user's own, or an earlier copy). Each copy goes to a
    temporary file in ``input_dir`` first and is then renamed, so a half-written file never appears. A folder that
    cannot be written logs one warning: the templates then need the files uploaded by hand.
    """
    import logging
    import os
    import shutil
    import tempfile

    copied = []
    try:
        os.makedirs(input_dir, exist_ok=True)
        for name, rel in EXAMPLE_INPUTS.items():
            dest = os.path.join(input_dir, name)
            if os.path.exists(dest):
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=input_dir)
            try:
                with os.fdopen(fd, "wb") as out, open(os.path.join(PACK_DIR, rel), "rb") as src:
                    shutil.copyfileobj(src, out)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            copied.append(name)
    except OSError as exc:
        logging.warning("DiffuMatting: could not copy the example workflows' inputs into %s (%s); upload %s by hand "
                        "to run those templates", input_dir, exc, ", ".join(EXAMPLE_INPUTS))
    return copied


def serving_ui() -> bool:
    """True inside the ComfyUI app (its PromptServer exists before custom nodes load); False in a headless ComfyUI
    (``comfy_bootstrap``: ``generate``, ``train``, the tests), which has no template browser."""
    import sys

    server = sys.modules.get("server")  # ComfyUI's top-level server.py
    return getattr(getattr(server, "PromptServer", None), "instance", None) is not None


async def comfy_entrypoint():
    """V3 entry point: ComfyUI awaits this and asks the extension for its node list. With a UI, the templates'
    input files are put into the input folder first (:func:`install_example_inputs`)."""
    import folder_paths

    register_model_folder()
    if serving_ui():
        install_example_inputs(folder_paths.get_input_directory())
    from .nodes import DiffuMattingExtension

    return DiffuMattingExtension()
