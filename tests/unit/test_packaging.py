"""The pack is an installable package: `pip wheel .` builds a wheel whose `diffumatting` package is the pack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools builds in-tree (build/), where a stale copy of a deleted module would leak in.
    src = tmp_path_factory.mktemp("src") / "pack"
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                                  ".pytest_cache", "demo_out", "out"))
    # --no-build-isolation: setuptools from this venv, no download (CI has one; a user's `pip wheel .` fetches it)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No module named" in result.stderr and "setuptools" in result.stderr:
        pytest.skip("setuptools is not installed in this Python (pip wheel . would fetch it)")
    assert result.returncode == 0, result.stderr[-2000:]
    wheels = list(out.glob("diffumatting-*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


def test_wheel_holds_every_pack_package_and_module(wheel):
    names = set(wheel.namelist())
    for path in REPO_ROOT.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in {"tests", "bench", "qa", "docs", "build", ".venv", "assets", "workflows"} or "site-packages" in rel.parts:
            continue
        assert f"diffumatting/{rel.as_posix()}" in names, f"{rel} is missing from the wheel"


def test_wheel_holds_only_files_of_the_tree(wheel):
    for name in wheel.namelist():
        if name.startswith("diffumatting/"):
            assert (REPO_ROOT / name[len("diffumatting/"):]).is_file(), f"{name} is in the wheel but not in the tree"


def _example_inputs() -> list[str]:
    """The files the pack copies into ComfyUI's input folder for the templates (``EXAMPLE_INPUTS``)."""
    import diffumatting

    return list(diffumatting.EXAMPLE_INPUTS.values())


def test_wheel_holds_the_data_the_code_reads(wheel):
    names = set(wheel.namelist())
    for path in [*REPO_ROOT.glob("weights/*.safetensors"), *REPO_ROOT.glob("workflows/*.json"),
                 *REPO_ROOT.glob("workflows/api/*.json"), REPO_ROOT / "assets" / "make_demo.py",
                 *(REPO_ROOT / rel for rel in _example_inputs())]:
        rel = path.relative_to(REPO_ROOT).as_posix()
        assert f"diffumatting/{rel}" in names, f"{rel} is missing from the wheel"
    assert not any(n.startswith(("diffumatting/tests/", "diffumatting/bench/")) for n in names)


def test_wheel_declares_the_runtime_requirements(wheel):
    """The wheel's Requires-Dist are exactly requirements.txt (torch never: ComfyUI brings its own build)."""
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    declared = {line.split(":", 1)[1].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for line in wheel.read(meta).decode().splitlines() if line.startswith("Requires-Dist:")}
    wanted = {line.split("#")[0].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
              for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()}
    wanted.discard("")
    assert declared == wanted
    assert "torch" not in declared
