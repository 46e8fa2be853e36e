"""common/: key colours, image files (8/16-bit, gray, alpha), atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffumatting.common.keycolour import colour_to_hex, parse_key_colour
from diffumatting.common.files import atomic_path, atomic_write_text
from diffumatting.common.images import load_image, read_png_text, save_png


@pytest.mark.parametrize("value, expected", [
    ("pure_green", (0, 255, 0)), ("#00ff00", (0, 255, 0)), ("0F0", (0, 255, 0)), ("#FF00FF", (255, 0, 255)),
    ((0, 128, 255), (0, 128, 255)), ((0.0, 1.0, 0.0), (0, 255, 0)), ("0,177,64", (0, 177, 64)),
    ("green", (0, 177, 64)), ("chroma green #00B140", (0, 177, 64)), ("chroma_blue", (0, 71, 187)),
])
def test_parse_key_colour(value, expected):
    rgb = parse_key_colour(value).tensor()
    assert rgb.shape == (3,) and rgb.dtype == torch.float32
    assert torch.allclose(rgb * 255, torch.tensor(expected, dtype=torch.float32), atol=0.5)


@pytest.mark.parametrize("bad", ["chartreuse-ish", "#12345", (1, 2), (300, 0, 0), None, "0,x,1", "auto"])
def test_parse_key_colour_rejects_with_a_named_error(bad):
    with pytest.raises(ValueError, match="key_colour"):
        parse_key_colour(bad)


def test_colour_to_hex_round_trip():
    assert colour_to_hex(parse_key_colour("#12abef")) == "#12abef"


def test_png_round_trip_16_bit_rgba(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 20, 30, generator=gen)
    alpha = torch.rand(1, 20, 30, generator=gen)
    path = tmp_path / "x.png"
    save_png(path, rgb, alpha, bits=16, text={"prompt": "{\"a\": 1}"})
    loaded = load_image(path)
    assert loaded.bit_depth == 16 and loaded.source_mode == "rgba"
    assert (loaded.rgb - rgb).abs().max() < 1 / 65535 + 1e-6
    assert (loaded.alpha - alpha).abs().max() < 1 / 65535 + 1e-6
    assert read_png_text(path) == {"prompt": "{\"a\": 1}"}


def test_png_round_trip_8_bit_gray_is_expanded(tmp_path):
    gray = torch.linspace(0, 1, 16 * 16).reshape(1, 16, 16)
    path = tmp_path / "g.png"
    save_png(path, None, gray, bits=8)
    loaded = load_image(path)
    assert loaded.source_mode == "gray" and loaded.alpha is None
    assert loaded.rgb.shape == (3, 16, 16)
    assert torch.allclose(loaded.rgb[0], loaded.rgb[2])


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: not a readable image"):
        load_image(junk)
    tiny = tmp_path / "tiny.png"
    save_png(tiny, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="4x4 px"):
        load_image(tiny)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_files_get_normal_permissions(tmp_path):
    """Files written atomically are readable like files from open() (mkstemp alone would make them 0600)."""
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == 0o644
