"""ComfyUI's own start-up path: `main.py --cpu --quick-test-for-ci` with the pack in a custom_nodes folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_test_for_ci_imports_the_pack(comfy, tmp_path):
    custom_nodes = tmp_path / "custom_nodes"
    custom_nodes.mkdir()
    for name in ("out", "temp", "user", "in"):
        (tmp_path / name).mkdir()
    (custom_nodes / "DiffuMatting").symlink_to(REPO_ROOT, target_is_directory=True)
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"diffumatting_test:\n    custom_nodes: {custom_nodes}\n")
    cmd = [sys.executable, "main.py", "--cpu", "--quick-test-for-ci", "--disable-api-nodes",
           "--extra-model-paths-config", str(config), "--output-directory", str(tmp_path / "out"),
           "--temp-directory", str(tmp_path / "temp"), "--user-directory", str(tmp_path / "user"),
           "--input-directory", str(tmp_path / "in"),
           "--database-url", "sqlite:///:memory:"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(cmd, cwd=comfy.root, capture_output=True, text=True, timeout=300, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    import_lines = [line for line in log.splitlines() if "DiffuMatting" in line]
    assert any("seconds:" in line for line in import_lines), f"pack not in ComfyUI's import-time list:\n{log[-4000:]}"
    assert not any("IMPORT FAILED" in line for line in import_lines), "\n".join(import_lines)
    # #19: a real start (with its server) put the templates' inputs into the fresh input folder
    from diffumatting import EXAMPLE_INPUTS

    assert sorted(p.name for p in (tmp_path / "in").iterdir() if p.is_file()) == sorted(EXAMPLE_INPUTS), log[-4000:]
