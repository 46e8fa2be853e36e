"""Pack foundation: import hygiene, the CLI entry, the layout rules of CONTRIBUTING.md."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_PACKAGES = ["greenpost", "green_control", "matting_head", "compositing", "trainer", "synthetic", "dataset", "common"]
COMFY_MODULES = {"comfy", "comfy_api", "comfy_execution", "folder_paths", "nodes", "server", "execution", "latent_preview"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_packages_do_not_import_comfyui(package):
    """The core is pure torch: ComfyUI specifics live only in nodes/.

    The trainer is the one exception by design: it runs ComfyUI's own model code outside the node graph (loaded
    from COMFYUI_PATH by comfy_bootstrap.py), so it may use `comfy` but never the graph or server side.
    """
    forbidden = COMFY_MODULES - {"comfy"} if package == "trainer" else COMFY_MODULES
    offenders = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        bad = _imports(path) & forbidden
        if bad:
            offenders.append(f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_no_absolute_imports_of_pack_modules():
    """Inside the pack, imports are relative (ComfyUI imports the pack under its file-system path)."""
    pack_names = set(CORE_PACKAGES) | {"diffumatting"}
    offenders = []
    for path in REPO_ROOT.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in {"tests", "bench", "qa", ".venv", "assets", "workflows", "docs"} or "site-packages" in rel.parts:
            continue
        bad = _imports(path) & pack_names
        if bad:
            offenders.append(f"{rel} imports {sorted(bad)} absolutely")
    assert not offenders, "\n".join(offenders)


def test_root_init_imports_without_comfyui():
    """Importing the pack does nothing heavy: no ComfyUI module, no torch, no sys.path change."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('dm_pack', {str(REPO_ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO_ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); before = list(sys.path); spec.loader.exec_module(m)\n"
        "assert callable(m.comfy_entrypoint)\n"
        "assert 'folder_paths' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "assert sys.path == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def _cli(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "-m", "diffumatting", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_help_lists_commands():
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("demo", "key", "train-head", "train", "dataset", "generate"):
        assert command in result.stdout


def test_cli_unknown_command_fails_cleanly():
    result = _cli("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_no_command_prints_help_and_fails():
    result = _cli()
    assert result.returncode == 2
    assert "usage:" in result.stdout


def test_sys_path_is_edited_only_by_the_bootstrap():
    """One module may put ComfyUI on sys.path (comfy_bootstrap.py); nothing else in the tree edits it."""
    edit = re.compile(r"sys\.path\s*(\.(insert|append|remove|pop|extend)\b|\[[^\]]*\]\s*=|\s*\+?=(?!=))")
    offenders = []
    for path in REPO_ROOT.rglob("*.py"):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] in {".venv", "build"} or "site-packages" in rel.parts or rel.as_posix() == "comfy_bootstrap.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if edit.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_cli_runs_from_any_folder():
    """The installed package, not the working directory, provides `python -m diffumatting`."""
    result = subprocess.run([sys.executable, "-m", "diffumatting", "--version"], cwd="/", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("diffumatting ")


# Import name -> the distribution that provides it (what requirements.txt must list). torch comes with ComfyUI.
DISTRIBUTIONS = {"numpy": "numpy", "safetensors": "safetensors", "kornia": "kornia", "cv2": "opencv-python-headless",
                 "av": "av", "tqdm": "tqdm", "PIL": "pillow", "scipy": "scipy", "yaml": "pyyaml",
                 "ray": "ray"}
OPTIONAL_REQUIREMENTS = ["requirements-ray.txt"]  # optional features' own requirement files (ray: generate --workers)
PROVIDED = {"torch"} | COMFY_MODULES | {"utils"}  # ComfyUI brings torch; `utils` is ComfyUI's own top-level package
RUNTIME_SKIP = {"tests", "bench", "qa", ".venv", "assets", "workflows", "docs", "build"}


def _runtime_files():
    for path in sorted(REPO_ROOT.rglob("*.py")):
        rel = path.relative_to(REPO_ROOT)
        if rel.parts[0] not in RUNTIME_SKIP and "site-packages" not in rel.parts:
            yield rel, path


def test_requirements_list_every_third_party_runtime_import():
    """What `pip install` of the pack (requirements.txt = the wheel's Requires-Dist, tests/unit/test_packaging.py)
    brings is enough for every module ComfyUI or the CLI imports: no third-party import is left out."""
    listed = {re.split(r"[<>=!~ ]", line.strip(), maxsplit=1)[0].lower()
              for name in ["requirements.txt", *OPTIONAL_REQUIREMENTS]
              for line in (REPO_ROOT / name).read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")}
    missing = []
    for rel, path in _runtime_files():
        for name in sorted(_imports(path) - set(sys.stdlib_module_names) - PROVIDED - set(CORE_PACKAGES) - {"diffumatting"}):
            dist = DISTRIBUTIONS.get(name)
            if dist is None or dist not in listed:
                missing.append(f"{rel} imports {name} ({dist or 'unknown distribution: add it to DISTRIBUTIONS'})")
    assert not missing, "\n".join(missing)


# The allowed import map between the pack's packages (relative imports; "." = the pack root: __init__ / PACK_DIR).
# Core packages never import nodes/ or cli/; common/ imports no other pack package.
ALLOWED_IMPORTS = {
    "common": set(),
    "greenpost": {"common"},
    "compositing": {"common"},
    "synthetic": {"common"},
    "dataset": {"common"},
    "green_control": {"common"},
    "matting_head": {"common", "greenpost"},  # its greenpost prior
    "trainer": {"common", "greenpost", "green_control", "matting_head", "compositing", "synthetic", "dataset",
                "comfy_bootstrap"},
    "nodes": {"common", "greenpost", "green_control", "matting_head", "compositing", "synthetic", "dataset", "."},
    "factory": {"common", "dataset", "comfy_bootstrap"},  # ComfyUI only through the one bootstrap
    "cli": {"common", "greenpost", "green_control", "matting_head", "compositing", "synthetic", "dataset", "trainer",
            "factory", "comfy_bootstrap", "."},
}


def _pack_imports(rel: Path, path: Path) -> set[str]:
    """-> the top-level pack packages (or "." for the root module) that ``path``'s relative imports reach."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.ImportFrom) and node.level > 0):
            continue
        base = list(rel.parts[:-1])
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        parts = base + (node.module.split(".") if node.module else [])
        if not parts:  # `from .. import x` at the root: a name of the root package (or a package named x)
            out.update(a.name if (REPO_ROOT / a.name).is_dir() or (REPO_ROOT / f"{a.name}.py").is_file() else "."
                       for a in node.names)
        else:
            out.add(parts[0] if (REPO_ROOT / parts[0]).is_dir() or (REPO_ROOT / f"{parts[0]}.py").is_file() else ".")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_packages_import_only_what_the_layering_allows(package):
    offenders = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        rel = path.relative_to(REPO_ROOT)
        bad = _pack_imports(rel, path) - ALLOWED_IMPORTS[package] - {package}
        if bad:
            offenders.append(f"{rel} imports {sorted(bad)} (allowed: {sorted(ALLOWED_IMPORTS[package])})")
    assert not offenders, "\n".join(offenders)


def test_the_layering_check_sees_relative_imports(tmp_path):
    """The checker itself catches a core module reaching into nodes/ or cli/ (so the test above can fail)."""
    probe = tmp_path / "x.py"
    probe.write_text("from ..nodes.common import to_image\nfrom ..cli import CLIError\nfrom .band import box\n"
                     "from ...x import y\nimport os\n")
    assert _pack_imports(Path("greenpost/x.py"), probe) == {"nodes", "cli", "greenpost", "."}
    assert _pack_imports(Path("greenpost/core.py"), REPO_ROOT / "greenpost" / "core.py") == {"common", "greenpost"}


def test_requirements_never_pin_torch():
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip().split(">")[0].split("=")[0].split("<")[0].strip().lower()
        assert name not in {"torch", "torchvision", "torchaudio"}, line


def test_pyproject_registry_metadata():
    import tomllib

    data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert data["project"]["name"] and "comfyui" not in data["project"]["name"].lower()
    assert data["tool"]["comfy"]["requires-comfyui"].startswith(">=0.8")
    deps = {d.split(">")[0].split("=")[0].strip().lower() for d in data["project"]["dependencies"]}
    reqs = {line.split(">")[0].split("=")[0].strip().lower() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert deps == reqs, "pyproject dependencies and requirements.txt disagree"
