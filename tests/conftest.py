"""Test set-up shared by the unit and integration suites: the shared data folder and its fixtures.

The pack is imported as the installed package ``diffumatting`` (``pip install -e .``, part of the README's set-up
command); nothing here edits ``sys.path``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("DIFFUMATTING_SHARED", REPO_ROOT.parent / "shared"))


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
