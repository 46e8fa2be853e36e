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


async def comfy_entrypoint():
    """V3 entry point: ComfyUI awaits this and asks the extension for its node list."""
    register_model_folder()
    from .nodes import DiffuMattingExtension

    return DiffuMattingExtension()
