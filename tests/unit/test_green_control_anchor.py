"""green_control.anchor and green_control.tokens: x0 anchoring, the sigma schedule, green latent, token positions."""

from __future__ import annotations

import pytest
import torch

from diffumatting.green_control.anchor import (
    anchor_x0,
    flat_key_image,
    key_latent,
    schedule_progress,
    strength_schedule,
)
from diffumatting.common.keycolour import colour_word, parse_key_colour
from diffumatting.green_control.tokens import find_word_positions, token_matches


def _latents(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 4, 8, 8, generator=g)
    z = torch.randn(1, 4, 1, 1, generator=g)
    return x0, z


def test_strength_zero_is_identity():
    x0, z = _latents()
    out = anchor_x0(x0, z, torch.ones(2, 1, 8, 8), 0.0)
    assert torch.equal(out, x0)
    out = anchor_x0(x0, z, torch.zeros(2, 1, 8, 8), 1.0)
    assert torch.equal(out, x0)


def test_strength_one_full_mask_is_exactly_green():
    x0, z = _latents()
    out = anchor_x0(x0, z, torch.ones(2, 1, 8, 8), 1.0)
    assert torch.equal(out, z.expand_as(x0))
    # over-strength is clamped to a full replacement, never an overshoot
    assert torch.equal(anchor_x0(x0, z, torch.ones(2, 1, 8, 8), 3.0), z.expand_as(x0))


def test_partial_mask_and_per_image_weight():
    x0, z = _latents()
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, :4] = 1.0  # left half background
    out = anchor_x0(x0, z, mask, torch.tensor([1.0, 0.5]))
    assert torch.equal(out[0, :, :, :4], z[0].expand(4, 8, 4))
    assert torch.equal(out[:, :, :, 4:], x0[:, :, :, 4:])
    torch.testing.assert_close(out[1, :, :, :4], 0.5 * (x0[1, :, :, :4] + z[0]))


def test_anchor_keeps_dtype_and_rejects_bad_shapes():
    x0, z = _latents()
    out = anchor_x0(x0.half(), z, torch.ones(2, 1, 8, 8), 1.0)
    assert out.dtype == torch.float16
    with pytest.raises(ValueError, match="mask"):
        anchor_x0(x0, z, torch.ones(2, 1, 4, 4), 1.0)
    with pytest.raises(ValueError, match="z_green"):
        anchor_x0(x0, torch.zeros(1, 3, 1, 1), torch.ones(2, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="weight"):
        anchor_x0(x0, z, torch.ones(2, 1, 8, 8), torch.ones(3))


def test_schedule_progress_and_cutoff():
    sigmas = torch.tensor([14.6, 6.0, 3.0, 1.5, 0.7, 0.3, 0.1, 0.0])  # 7 steps
    prog = schedule_progress(sigmas[:-1], sigmas)
    torch.testing.assert_close(prog, torch.arange(7) / 7.0)
    # a second-order sampler's midpoint lands between its neighbours
    mid = schedule_progress(torch.tensor([(6.0 * 3.0) ** 0.5]), sigmas)
    assert 1 / 7 < mid.item() < 2 / 7
    w = strength_schedule(sigmas[:-1], sigmas, 0.8, 0.7)
    # steps 0..4 have progress 0, 1/7, .., 4/7 < 0.7; steps 5, 6 (5/7 = 0.714, 6/7) are off
    torch.testing.assert_close(w, torch.tensor([0.8] * 5 + [0.0] * 2))
    assert (strength_schedule(sigmas[:-1], sigmas, 0.8, 0.0) == 0).all()
    assert (strength_schedule(sigmas[:-1], sigmas, 0.8, 1.0) == 0.8).all()
    assert (strength_schedule(torch.tensor([1.0]), None, 0.5, 0.3) == 0.5).all()
    with pytest.raises(ValueError, match="strength"):
        strength_schedule(sigmas[:1], sigmas, -1.0, 0.5)


def test_key_latent_interior_mean_and_nan_error():
    rgb = torch.tensor([0.0, 1.0, 0.0])
    img = flat_key_image(rgb, 16)
    assert img.shape == (1, 3, 16, 16) and (img[:, 1] == 1).all() and (img[:, 0] == 0).all()

    def encode(x):  # a stand-in encoder: per-channel linear map, with disturbed borders
        z = torch.stack([x[:, 0] - x[:, 1], x[:, 1] * 2, x[:, 2], x.mean(1)], 1)[:, :, ::2, ::2].clone()
        z[..., 0, :] = 100.0
        return z

    z = key_latent(encode, rgb, size=16, border=1)
    assert z.shape == (1, 4, 1, 1)
    torch.testing.assert_close(z.flatten(), torch.tensor([-1.0, 2.0, 0.0, 1 / 3]))
    with pytest.raises(ValueError, match="non-finite"):
        key_latent(lambda x: torch.full((1, 4, 8, 8), float("nan")), rgb)
    with pytest.raises(ValueError, match="key"):
        flat_key_image(torch.tensor([0.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="encode"):
        key_latent(lambda x: x[0], rgb)  # [3,H,W]: not a latent batch


def test_flat_key_image_takes_a_key_colour_and_a_batch():
    key = parse_key_colour("chroma_green")
    img = flat_key_image(key, size=8, batch=3)
    assert img.shape == (3, 3, 8, 8) and img.dtype == torch.float32
    torch.testing.assert_close(img[2, :, 4, 4], torch.tensor([0.0, 177 / 255, 64 / 255]))
    torch.testing.assert_close(flat_key_image(key.rgb, 8), img[:1])
    for bad in ({"size": 0}, {"batch": 0}, {"size": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            flat_key_image(key, **{"size": 8, "batch": 1, **bad})


# A tiny CLIP-like vocabulary with the entries ComfyUI's SD1 tokenizer uses for these words.
VOCAB = {49406: "<|startoftext|>", 49407: "<|endoftext|>", 320: "a</w>", 736: "red</w>", 3055: "apple</w>",
         525: "on</w>", 1901: "green</w>", 2762: "green", 3750: "screen</w>", 5994: "background</w>",
         10235: "greens</w>", 1746: "blue</w>", 267: ",</w>", 9037: "greenhouse</w>"}


def _chunks(ids, weights=None):
    """Pad ids to CLIP chunks of 77 (BOS + 75 + EOS), as ComfyUI does, with (id, weight) pairs."""
    weights = weights or [1.0] * len(ids)
    chunks, body = [], list(zip(ids, weights))
    while True:
        part, body = body[:75], body[75:]
        chunk = [(49406, 1.0)] + part + [(49407, 1.0)]
        chunk += [(49407, 1.0)] * (77 - len(chunk))
        chunks.append(chunk)
        if not body:
            return chunks


def test_token_positions_short_prompt():
    # "a red apple on a green screen background" -> green at 6 (BOS at 0)
    ids = [320, 736, 3055, 525, 320, 1901, 3750, 5994]
    assert find_word_positions(_chunks(ids), VOCAB, "green") == [6]
    # weighted text keeps the position (ComfyUI only changes the weight)
    w = [1.0] * 5 + [1.3] + [1.0, 1.0]
    assert find_word_positions(_chunks(ids, w), VOCAB, "green") == [6]


def test_token_positions_long_prompt_and_subject_occurrences():
    ids = [320] * 80 + [1901, 3750]  # 80 filler tokens, then "green screen": chunk 1, position 6
    assert find_word_positions(_chunks(ids), VOCAB, "green") == [77 + 6]
    # "a green apple, ... green screen": keep only the suffix's occurrence
    ids = [320, 1901, 3055, 267, 320, 2762, 3750]
    assert find_word_positions(_chunks(ids), VOCAB, "green") == [2, 6]
    assert find_word_positions(_chunks(ids), VOCAB, "green", last=1) == [6]
    # plain id lists work too
    assert find_word_positions([[49406, 1901, 49407]], VOCAB, "green") == [1]


def test_token_matching_rules_and_missing_word():
    assert token_matches("green</w>", "green") and token_matches("green", "green")
    assert token_matches("greens</w>", "Green")
    assert not token_matches("greenhouse</w>", "green") and not token_matches("blue</w>", "green")
    with pytest.raises(ValueError, match="'green' does not occur"):
        find_word_positions(_chunks([320, 736]), VOCAB, "green")
    with pytest.raises(ValueError, match="word"):
        find_word_positions(_chunks([320]), VOCAB, " ")


def test_key_colour_words():
    """The prompt word of every preset is the colour a user would name it with."""
    assert colour_word([0.0, 177 / 255, 64 / 255]) == "green"
    assert colour_word([0.0, 1.0, 0.0]) == "green"
    assert colour_word([0.0, 71 / 255, 187 / 255]) == "blue"
    assert colour_word([1.0, 0.0, 1.0]) == "magenta"
    words = {p: parse_key_colour(p).word for p in ("chroma_green", "pure_green", "chroma_blue", "pure_blue", "magenta")}
    assert words == {"chroma_green": "green", "pure_green": "green", "chroma_blue": "blue", "pure_blue": "blue",
                     "magenta": "magenta"}
