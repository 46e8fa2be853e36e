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


# ------------------------------------------------------------------------------------------------------------------
# issue #19 K3-K8


def test_key_inputs_sharing_a_name_get_distinct_outputs(tmp_path, capsys):
    import cv2

    rgb, alpha = _green_picture()
    folder = tmp_path / "coll"
    save_png(folder / "a.png", rgb)
    bgr = (rgb.permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
    cv2.imwrite(str(folder / "a.jpg"), np.ascontiguousarray(bgr))
    save_png(tmp_path / "other" / "a.png", rgb)  # the same name again, from another folder
    assert main(["key", str(folder), str(tmp_path / "other" / "a.png"), "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_jpg_rgba.png", "a_png_2_rgba.png",
                                                                    "a_png_rgba.png"]
    assert "share a name" in out
    for name in ("a_jpg_rgba.png", "a_png_rgba.png", "a_png_2_rgba.png"):  # every result kept (JPEG: its artefacts)
        assert (load_image(tmp_path / "out" / name).alpha - alpha).abs().mean() < 0.01


@pytest.mark.parametrize("command", ["key", "demo"])
def test_unusable_output_folders_are_one_line_errors_before_any_work(tmp_path, capsys, command):
    rgb, _ = _green_picture()
    save_png(tmp_path / "good.png", rgb)
    (tmp_path / "afile").write_text("x")
    args = [str(tmp_path / "good.png")] if command == "key" else ["--image", str(tmp_path / "good.png")]
    for out, says in ((tmp_path / "afile", "is a file"), ("/proc/x", "cannot create the folder"),
                      ("/proc/sys", "cannot write into")):
        assert main([command, *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: -o/--out: ") and says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["key", "demo"])
def test_a_disk_that_fills_up_is_a_one_line_error_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch, command):
    import errno

    rgb, _ = _green_picture()
    save_png(tmp_path / "good.png", rgb)
    real_fsync = os.fsync

    def full(fd):  # what a full disk does to the write of a keyed result
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    args = [str(tmp_path / "good.png")] if command == "key" else ["--image", str(tmp_path / "good.png")]
    assert main([command, *args, "-o", str(tmp_path / "out")]) == 2
    monkeypatch.setattr(os, "fsync", real_fsync)
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1 and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []  # no partial or temporary file


def test_demo_bad_image_is_a_one_line_error(tmp_path, capsys):
    import cv2

    cv2.imwrite(str(tmp_path / "nan.tiff"), np.full((16, 16, 3), np.nan, np.float32))
    assert main(["demo", "--image", str(tmp_path / "nan.tiff"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "NaN" in err and err.count("\n") == 1


def test_an_image_too_large_for_the_memory_is_refused_with_the_limit(tmp_path, capsys, monkeypatch):
    from diffumatting.greenpost import core

    rgb, _ = _green_picture()
    save_png(tmp_path / "good.png", rgb)
    monkeypatch.setattr(core, "available_memory", lambda device: 64 * 80 * 100)  # room for under 64x80 px
    assert main(["key", str(tmp_path / "good.png"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "80x64 px" in err and "over the limit of" in err and "free memory" in err and "bytes per pixel" in err
    assert main(["demo", "--image", str(tmp_path / "good.png"), "-o", str(tmp_path / "d")]) == 2
    assert "over the limit of" in capsys.readouterr().err


def test_no_key_colour_is_said_once_in_plain_words(tmp_path, capfd):
    save_png(tmp_path / "noise.png", torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0)))
    assert main(["demo", "--image", str(tmp_path / "noise.png"), "-o", str(tmp_path / "d")]) == 0
    out, err = capfd.readouterr()
    assert "no green, blue or magenta screen found" in out and "key colour #" not in out
    assert "Warning" not in err and "warnings.warn" not in err
    assert main(["key", str(tmp_path / "noise.png"), "-o", str(tmp_path / "k")]) == 0
    out, err = capfd.readouterr()
    assert "(no key colour found)" in out and out.count("no recognisable key colour") == 1
    assert "--key-colour" in out and "Warning" not in err
    assert load_image(tmp_path / "k" / "noise_rgba.png").alpha.min() == 1.0
