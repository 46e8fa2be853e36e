"""`python -m diffumatting key` and `demo`: RGBA files with straight alpha, bad inputs as one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffumatting.cli import main
from diffumatting.common.images import load_image, save_png

REPO = Path(__file__).resolve().parents[2]
GREEN = torch.tensor([0.10, 0.70, 0.28])


def _green_picture(h=64, w=80):
    """-> (rgb [3,H,W], alpha [1,H,W]): a grey disc with a soft edge on a flat green."""
    ys = torch.arange(h).float()[:, None]
    xs = torch.arange(w).float()[None, :]
    alpha = ((20 - ((ys - h / 2) ** 2 + (xs - w / 2) ** 2).sqrt()) / 4).clamp(0, 1)[None]
    fg = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1)
    return alpha * fg + (1 - alpha) * GREEN.view(3, 1, 1), alpha


def test_key_writes_straight_rgba(tmp_path, capsys):
    rgb, alpha = _green_picture()
    src = tmp_path / "shot.png"
    save_png(src, rgb)
    assert main(["key", str(src), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "shot_rgba.png"
    assert out.is_file() and str(out) in capsys.readouterr().out
    got = load_image(out)
    assert got.source_mode == "rgba" and got.bit_depth == 8
    assert (got.alpha - alpha).abs().max() < 0.03
    # straight colour: where the object is half transparent the colour is still the object's grey, not darker
    half = (alpha > 0.3) & (alpha < 0.7)
    assert (got.rgb - 0.5).abs()[half.expand(3, -1, -1)].max() < 0.05
    assert not list((tmp_path / "out").glob(".*partial*"))  # atomic writes leave no temp files


def test_key_alpha_only_and_key_colour_and_16_bit(tmp_path):
    rgb, alpha = _green_picture()
    src = tmp_path / "deep.png"
    save_png(src, rgb, bits=16)
    assert main(["key", str(src), "-o", str(tmp_path), "--alpha-only", "--key-colour", "#1AB347"]) == 0
    got = load_image(tmp_path / "deep_alpha.png")
    assert got.source_mode == "gray" and got.bit_depth == 16
    assert (got.rgb[:1] - alpha).abs().max() < 0.03


def test_key_folder_input_and_rgba_input_note(tmp_path, capsys):
    rgb, alpha = _green_picture()
    folder = tmp_path / "in"
    save_png(folder / "a.png", rgb, torch.full_like(alpha, 0.5))  # an RGBA input whose alpha is not opaque
    save_png(folder / "b.png", rgb)
    assert main(["key", str(folder), "-o", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_rgba.png", "b_rgba.png"]
    assert "alpha channel is ignored" in capsys.readouterr().out
    assert main(["key", str(folder / "a.png"), "-o", str(tmp_path / "kept"), "--keep-input-alpha"]) == 0
    kept = load_image(tmp_path / "kept" / "a_rgba.png")
    assert (kept.alpha[:, 20:44, 20:60] - 0.5).abs().max() < 0.01


def test_key_greyscale_input_gives_opaque_with_a_warning(tmp_path, capsys):
    save_png(tmp_path / "grey.png", None, torch.rand(1, 32, 32))
    assert main(["key", str(tmp_path / "grey.png"), "-o", str(tmp_path / "o")]) == 0
    assert "greyscale" in capsys.readouterr().out
    assert load_image(tmp_path / "o" / "grey_rgba.png").alpha.min() == 1.0


def test_key_bad_inputs_are_one_line_errors(tmp_path, capsys):
    save_png(tmp_path / "tiny.png", torch.rand(3, 4, 4))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    rgb, _ = _green_picture()
    save_png(tmp_path / "good.png", rgb)
    code = main(["key", str(tmp_path / "tiny.png"), str(tmp_path / "junk.png"), str(tmp_path / "good.png"),
                 "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "at least 8x8" in err and "not a readable image" in err and "2 of 3" in err
    assert "Traceback" not in err
    assert (tmp_path / "o" / "good_rgba.png").is_file()  # the good file is still keyed
    assert not (tmp_path / "o" / "tiny_rgba.png").exists()
    assert main(["key", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 2
    assert main(["key", str(tmp_path / "good.png"), "-o", str(tmp_path / "o"), "--key-colour", "nope"]) == 2
    assert "--key-colour" in capsys.readouterr().err


def test_demo_writes_rgba_and_composite(tmp_path):
    # a subprocess from the repository root, exactly as the README runs it
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "diffumatting", "demo", "-o", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(out / "demo_rgba.png") in proc.stdout and str(out / "demo_composite.png") in proc.stdout
    rgba = load_image(out / "demo_rgba.png")
    comp = load_image(out / "demo_composite.png")
    assert rgba.source_mode == "rgba" and comp.source_mode == "rgb"
    # the bundled picture's true matte (made by assets/make_demo.py) is recovered well
    truth = load_image(REPO / "assets" / "demo_alpha.png").rgb[:1]
    # (the semi-transparent blue glass disc is the hard part: cyan-blue over green reads as more opaque)
    assert float(((rgba.alpha - truth) ** 2).mean()) < 4e-3
    # no green left in the composite where the object is opaque
    solid = (truth > 0.99).expand(3, -1, -1)
    c = comp.rgb
    assert float((c[1] - torch.maximum(c[0], c[2]))[solid[0]].max()) <= 0.02


def test_demo_asset_is_reproducible():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo", REPO / "assets" / "make_demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img, alpha = mod.make_demo()
    stored = load_image(REPO / "assets" / "demo_greenscreen.png").rgb.permute(1, 2, 0).numpy()
    assert img.shape == stored.shape
    assert np.abs(img - stored).max() <= 1 / 255 + 1e-6
