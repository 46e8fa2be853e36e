"""``python -m diffumatting``: see ``diffumatting/cli.py``."""

import os
import sys

from . import REPO_ROOT

# `python -m` from the repository root puts the root first on sys.path, where our `nodes/` package would shadow
# ComfyUI's top-level `nodes.py` in commands that run ComfyUI in-process. This package is already imported (and
# finds its submodules through its own __path__), so the root is no longer needed on sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO_ROOT]

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
