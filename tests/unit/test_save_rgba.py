"""Transparent file round trips: 16/8-bit RGBA PNG with straight alpha and text chunks, WebM VP9 with alpha."""

import pytest
import torch

from diffumatting.common.images import load_image, read_png_text
from diffumatting.dataset import encode_rgba_png, read_webm_rgba, write_webm_rgba


def _rgba(n=1, h=24, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    fg = torch.rand(n, 3, h, w, generator=g)
    alpha = torch.rand(n, 1, h, w, generator=g)
    alpha[:, :, :4] = 0.0
    alpha[:, :, -4:] = 1.0
    return fg, alpha


@pytest.mark.parametrize("bits", [8, 16])
def test_png_rgba_round_trip(tmp_path, bits):
    fg, alpha = _rgba()
    path = tmp_path / f"x{bits}.png"
    path.write_bytes(encode_rgba_png(fg[0], alpha[0], bits=bits, text={"prompt": '{"1": {}}', "workflow": "{}"}))
    loaded = load_image(path)
    assert loaded.source_mode == "rgba" and loaded.bit_depth == bits
    tol = 0.5 / (255 if bits == 8 else 65535) + 1e-7
    assert (loaded.alpha - alpha[0]).abs().max() <= tol
    # straight alpha: colour is kept even where alpha is 0 (nothing premultiplied)
    assert (loaded.rgb - fg[0]).abs().max() <= tol
    assert read_png_text(path) == {"prompt": '{"1": {}}', "workflow": "{}"}


def test_webm_alpha_round_trip(tmp_path):
    n, h, w = 4, 48, 64
    fg = torch.zeros(n, 3, h, w)
    alpha = torch.zeros(n, 1, h, w)
    for i in range(n):
        fg[i, 0] = 0.9
        fg[i, 1] = 0.2 + 0.1 * i
        alpha[i, :, 8:40, 8 + 4 * i : 40 + 4 * i] = 1.0
        alpha[i, :, 8:40, 24 + 4 * i : 32 + 4 * i] = 0.5  # a semi-transparent band
    path = tmp_path / "clip.webm"
    write_webm_rgba(path, fg, alpha, fps=8, crf=10, metadata={"prompt": "{}"})
    dec_fg, dec_alpha = read_webm_rgba(path)
    assert dec_fg.shape == (n, 3, h, w) and dec_alpha.shape == (n, 1, h, w)
    # lossy codec: alpha is decoded back (not an opaque plane), frame by frame, within a few levels
    assert (dec_alpha - alpha).abs().mean() < 0.01
    for i in range(n):  # the opaque part of each frame's box, which moves 4 px per frame
        assert (dec_alpha[i, :, 16:32, 12 + 4 * i : 20 + 4 * i] - 1).abs().max() < 0.05
    assert dec_alpha[:, :, :4].max() < 0.05
    band = torch.stack([dec_alpha[i, 0, 16:32, 26 + 4 * i : 30 + 4 * i].mean() for i in range(n)])
    assert torch.allclose(band, torch.full((n,), 0.5), atol=0.05)
    opaque = alpha.expand(-1, 3, -1, -1) > 0.99
    assert (dec_fg[opaque] - fg[opaque]).abs().mean() < 0.03
    assert not list(tmp_path.glob(".*partial*"))


def test_webm_odd_size_is_padded(tmp_path):
    fg, alpha = _rgba(n=2, h=21, w=31)
    write_webm_rgba(tmp_path / "odd.webm", fg, alpha)
    dec_fg, dec_alpha = read_webm_rgba(tmp_path / "odd.webm")
    assert dec_alpha.shape == (2, 1, 22, 32)
    assert dec_alpha[:, :, -1:, :].max() < 0.05 and dec_alpha[:, :, :, -1:].max() < 0.05


def test_webm_bad_input(tmp_path):
    fg, alpha = _rgba(n=2)
    with pytest.raises(ValueError, match="alpha"):
        write_webm_rgba(tmp_path / "a.webm", fg, alpha[:1])
    with pytest.raises(ValueError, match="fps"):
        write_webm_rgba(tmp_path / "a.webm", fg, alpha, fps=0)
    assert not list(tmp_path.iterdir())


def test_webm_refuses_an_empty_batch_and_nan_before_writing(tmp_path):
    # issue #19 N5, N6: a 0-byte .webm and NaN frames used to be written as success
    fg, alpha = _rgba(n=2)
    with pytest.raises(ValueError, match="fg: empty batch"):
        write_webm_rgba(tmp_path / "e.webm", fg[:0], alpha[:0])
    bad = fg.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="fg: holds NaN"):
        write_webm_rgba(tmp_path / "n.webm", bad, alpha)
    with pytest.raises(ValueError, match="alpha: holds NaN"):
        encode_rgba_png(fg[0], torch.full_like(alpha[0], float("nan")))
    assert not list(tmp_path.iterdir())
