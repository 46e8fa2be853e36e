"""Test set-up shared by the unit and integration suites.

Makes the pack importable as ``diffumatting.<package>`` without putting the repository root on ``sys.path`` for
good (the root holds our ``nodes/`` package, which would shadow ComfyUI's top-level ``nodes`` module).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("DIFFUMATTING_SHARED", REPO_ROOT.parent / "shared"))


def _import_alias() -> None:
    if "diffumatting" in sys.modules:
        return
    sys.path.insert(0, str(REPO_ROOT))
    try:
        importlib.import_module("diffumatting")
    finally:
        sys.path.remove(str(REPO_ROOT))
    # `python -m pytest` from the root also puts the root (as '' or its path) on sys.path: drop it.
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != REPO_ROOT]


_import_alias()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DIR} (set DIFFUMATTING_SHARED to its path)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def mattes_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "mattes"
    if not any(path.glob("*/alpha.png")):
        pytest.skip(f"no ground-truth mattes under {path} (the development set lives in ../shared/data/mattes)")
    return path


@pytest.fixture(scope="session")
def taef2_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "models" / "taef2"
    if not (path / "taef2_decoder.safetensors").is_file():
        pytest.skip(f"TAEF2 weights not found under {path} (expected ../shared/data/models/taef2)")
    return path
