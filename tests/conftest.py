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


# ---- training fixtures: tiny models and one tiny trained head, built once per session and shared


SMALL_HEAD = {"lateral": [8, 8, 8, 8], "width_8": 8, "width_16": 8, "width_32": 8, "width_4": 8, "width_2": 8,
              "width_1": 8}


@pytest.fixture(scope="session")
def tiny_taesd():
    """A tiny random TAESD-layout autoencoder (4 latent channels, 8-wide taps); treat it as read-only."""
    from diffumatting.matting_head.taesd import random_tiny_autoencoder

    return random_tiny_autoencoder(4, 8, seed=1)


@pytest.fixture(scope="session")
def tiny_backend(tiny_taesd):
    """The head trainer's backend over :func:`tiny_taesd` (CPU)."""
    from diffumatting.trainer.head import TaesdBackend

    return TaesdBackend(tiny_taesd, "random-taesd")


@pytest.fixture(scope="session")
def tiny_pairs():
    """One in-memory training pair (a 48 px fine-structure synthetic matte named "blob")."""
    from diffumatting.synthetic import synthetic_matte
    from diffumatting.trainer.pairs import Pair

    fg, a = synthetic_matte(48, 3, "fine")
    return [Pair("blob", fg, a)]


def _tiny_head_config(out, steps, **kw):
    from diffumatting.trainer.head import TrainConfig

    base = dict(out=str(out), steps=steps, batch=2, crop=32, buffer=6, buffer_init=4, refresh=1, ckpt_every=2,
                head_config=SMALL_HEAD, seed=5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def head_config():
    """-> make(out, steps, **overrides): a fast head-training TrainConfig (32 px crops, batch 2, small head)."""
    return _tiny_head_config


@pytest.fixture(scope="session")
def trained_head(tmp_path_factory, tiny_backend, tiny_pairs):
    """A head trained 3 steps on :func:`tiny_backend` -> namespace(path, ckpt, cfg, logs). Copy its files before
    training on from them; never write into its folder."""
    import types

    from diffumatting.trainer.head import ckpt_path, train_head

    folder = tmp_path_factory.mktemp("trained_head")
    cfg = _tiny_head_config(folder / "head.safetensors", 3)
    logs: list = []
    path = train_head(tiny_backend, tiny_pairs, cfg, progress=False, log_fn=logs.append)
    return types.SimpleNamespace(path=Path(path), ckpt=Path(ckpt_path(cfg)), cfg=cfg, logs=logs, folder=folder)
