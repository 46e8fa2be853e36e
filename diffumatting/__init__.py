"""Command-line and test alias of the DiffuMatting pack.

The repository root *is* the ComfyUI pack (ComfyUI imports its ``__init__.py`` under the folder's path), so the
core packages (``greenpost``, ``matting_head``, ...) live at the root and import each other relatively. Outside
ComfyUI (``python -m diffumatting``, the unit tests, the benchmarks) this small package stands in for the pack
module: its search path is this folder first (the CLI), then the repository root (the core packages), so
``diffumatting.greenpost`` is the same code ComfyUI loads as ``<pack>.greenpost``. The pack's root
``__init__.py`` (the ComfyUI entry point) is never run through this alias.
"""

import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
REPO_ROOT = _os.path.dirname(_HERE)
__path__ = [_HERE, REPO_ROOT]
__version__ = "0.1.0"
