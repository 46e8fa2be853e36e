"""common/keycolour.py used across the pack: the one parser, key_rgb, estimation from pixels, the torch-free preset
table, and the consumers (head prior, quality gate, data-set rows) taking a KeyColour as they take a tensor."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch

from diffumatting.common.keycolour import (KEY_PRESETS, PRESET_LABELS, KeyColour, NoKeyColourWarning,
                                           estimate_key_colours, estimate_key_colours_from_pixels, key_rgb,
                                           parse_key_colour)


def test_presets_say_what_they_are_and_old_names_still_parse():
    assert PRESET_LABELS["chroma_green"] == "chroma green #00B140"
    assert PRESET_LABELS["pure_green"] == "pure green #00FF00"
    for preset, label in PRESET_LABELS.items():
        assert parse_key_colour(label).preset == preset == parse_key_colour(preset).preset
        assert label.endswith(parse_key_colour(preset).hex.upper())
    assert parse_key_colour("green").preset == "chroma_green" and parse_key_colour("blue").preset == "chroma_blue"
    assert parse_key_colour("0, 177, 64").hex == "#00b140" and parse_key_colour("0,1,0").hex == "#00ff00"
    with pytest.raises(ValueError, match="--key-colour"):
        parse_key_colour("0,x,1", "--key-colour")


def test_the_preset_table_imports_without_torch():
    """The CLI builds its --help from it before torch is imported (``--help`` stays instant)."""
    code = ("import sys; from diffumatting.common.keypresets import PRESET_HELP, PRESET_LABELS; "
            "assert 'torch' not in sys.modules; print(PRESET_HELP)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "chroma_green (#00B140)" in out and "pure_green (#00FF00)" in out


@pytest.mark.parametrize("value", [
    parse_key_colour("pure_green"), [parse_key_colour("pure_green")], "pure_green", "#00FF00", (0, 255, 0),
    torch.tensor([0.0, 1.0, 0.0]), torch.tensor([[0.0, 1.0, 0.0]]),
])
def test_key_rgb_reads_every_form(value):
    rgb = key_rgb(value, 2)
    assert rgb.shape == (2, 3) and torch.equal(rgb, torch.tensor([[0.0, 1.0, 0.0]] * 2))


def test_key_rgb_refuses_wrong_counts_and_auto():
    with pytest.raises(ValueError, match="1 or 2"):
        key_rgb([parse_key_colour("green")] * 3, 2)
    with pytest.raises(ValueError, match="B=2"):
        key_rgb(torch.zeros(3, 3), 2)
    with pytest.raises(ValueError, match="auto"):
        key_rgb("auto", 2)


def test_estimate_from_pixels_agrees_with_the_image_estimate():
    img = torch.zeros(2, 3, 40, 48)
    img[0] = torch.tensor([0.05, 0.7, 0.25])[:, None, None]
    img[1] = torch.tensor([0.05, 0.25, 0.75])[:, None, None]
    img[:, :, 12:28, 14:34] = torch.tensor([0.8, 0.3, 0.2])[:, None, None]
    ring = torch.cat([img[..., :4, :].flatten(2), img[..., -4:, :].flatten(2)], 2)
    a, b = estimate_key_colours(img), estimate_key_colours_from_pixels(ring)
    for ka, kb in zip(a, b):
        assert ka.source == kb.source == "estimated" and torch.allclose(ka.tensor(), kb.tensor(), atol=1e-6)
    assert [k.word for k in b] == ["green", "blue"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grey = estimate_key_colours_from_pixels(torch.full((1, 3, 100), 0.5))
    assert grey[0].source == "default" and not grey[0].found
    assert any(issubclass(w.category, NoKeyColourWarning) for w in caught)
    with pytest.raises(ValueError, match="pixels"):
        estimate_key_colours_from_pixels(torch.zeros(1, 3, 0))


def test_head_prior_takes_key_colours_like_tensors():
    from diffumatting.matting_head.keyer import prior_alpha

    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 24, 20, generator=g)
    for preset in KEY_PRESETS:
        k = parse_key_colour(preset)
        for kind in ("colour_difference", "greenpost"):
            assert torch.allclose(prior_alpha(rgb, k, kind), prior_alpha(rgb, k.tensor(), kind), atol=1e-6), (preset, kind)
            assert torch.allclose(prior_alpha(rgb, [k, k], kind), prior_alpha(rgb, k.tensor()[None].expand(2, 3), kind),
                                  atol=1e-6)


def test_colour_difference_prior_is_unchanged_for_single_channel_keys():
    """The committed heads were trained on G - max(R, B) of the old argmax keyer: the shared primitive gives the
    same prior for every key with one dominant channel (greens, blues, reds)."""
    from diffumatting.matting_head.keyer import colour_difference_alpha

    def old(image, key, black=0.08, white=0.92):
        key = key.reshape(-1, 3)
        onehot = torch.nn.functional.one_hot(key.argmax(1), 3).to(image)[:, :, None, None]
        dom = (image * onehot).sum(1, keepdim=True)
        others = torch.where(onehot.bool(), torch.full_like(image, -1.0), image).amax(1, keepdim=True)
        kd = ((key[:, :, None, None] * onehot).sum(1, keepdim=True)
              - torch.where(onehot.bool(), torch.full_like(onehot, -1.0), key[:, :, None, None]).amax(1, keepdim=True))
        return ((1 - (dom - others) / kd.clamp_min(0.05) - black) / (white - black)).clamp(0, 1)

    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for key in ([0.0, 1.0, 0.0], [0.0, 177 / 255, 64 / 255], [0.1, 0.8, 0.2], [0.0, 71 / 255, 187 / 255],
                [0.9, 0.1, 0.2]):
        k = torch.tensor(key)
        assert torch.allclose(colour_difference_alpha(rgb, k), old(rgb, k), atol=1e-6), key


def test_quality_gate_and_writer_take_a_key_colour(tmp_path):
    from diffumatting.dataset import MattingDatasetWriter
    from diffumatting.dataset.quality import quality_scores

    fg = torch.zeros(1, 3, 32, 32)
    fg[:, 1] = 1.0
    alpha = torch.zeros(1, 1, 32, 32)
    alpha[..., 8:24, 8:24] = 1.0
    k = parse_key_colour("pure_green")
    assert quality_scores(fg, alpha, k) == quality_scores(fg, alpha, k.tensor())
    assert quality_scores(fg, alpha, k)[0]["key_residue"] == 1.0  # the object is the key colour
    w = MattingDatasetWriter(tmp_path / "ds", gate_enabled=False)
    w.write("a", fg[0], fg[0], alpha[0], k)
    w.write("b", fg[0], fg[0], alpha[0], KeyColour((0.1, 0.7, 0.3), "estimated"))
    w.write("c", fg[0], fg[0], alpha[0], torch.tensor([0.0, 0.0, 1.0]))
    rows = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert rows[0]["key_colour"] == "#00ff00" and rows[0]["key_source"] == "preset"
    assert rows[0]["key_preset"] == "pure_green"
    assert rows[1]["key_source"] == "estimated" and "key_preset" not in rows[1]
    assert rows[2]["key_colour"] == "#0000ff" and rows[2]["key_source"] == "rgb"


def test_decode_with_head_reports_the_keys_it_used():
    from diffumatting.matting_head.decode import decode_with_head, key_list
    from diffumatting.matting_head.network import MattingHead
    from diffumatting.matting_head.taps import tap_spec
    from diffumatting.matting_head.taesd import random_tiny_autoencoder

    ae = random_tiny_autoencoder(4, 8, seed=3)
    spec = tap_spec(ae.decoder)
    head = MattingHead(spec.channels).eval()
    z = torch.randn(2, 4, 6, 5)
    k = parse_key_colour("chroma_blue")
    with torch.no_grad():
        given = decode_with_head(ae.decode, spec, head, z, key=k)
        as_tensor = decode_with_head(ae.decode, spec, head, z, key=k.tensor())
    assert given["keys"] == [k, k] and torch.equal(given["alpha"], as_tensor["alpha"])
    assert [x.hex for x in as_tensor["keys"]] == [k.hex] * 2
    assert len(key_list(torch.rand(2, 3), 2)) == 2


# ------------------------------------------------------------------------------------------------------------------
# issue #19: the templates' inputs on a fresh install


def test_every_template_input_is_shipped_and_installed_once(tmp_path):
    """Each file a shipped workflow loads (LoadImage / LoadVideo) is in EXAMPLE_INPUTS and in the pack; installing
    copies them into an empty input folder, a second start copies nothing, a user's own file is never replaced."""
    from pathlib import Path

    import diffumatting

    root = Path(diffumatting.PACK_DIR)
    named = set()
    for path in (root / "workflows" / "api").glob("*.json"):
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "LoadImage":
                named.add(node["inputs"]["image"])
            elif node["class_type"] == "LoadVideo":
                named.add(node["inputs"]["file"])
    assert named == set(diffumatting.EXAMPLE_INPUTS)
    for rel in diffumatting.EXAMPLE_INPUTS.values():
        assert (root / rel).is_file(), rel
    mine = tmp_path / "input" / "diffumatting_example_control.png"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's own file")
    copied = diffumatting.install_example_inputs(str(tmp_path / "input"))
    assert set(copied) == named - {mine.name}
    assert mine.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in (tmp_path / "input").iterdir()) == sorted(named)  # no temporary files left
    assert diffumatting.install_example_inputs(str(tmp_path / "input")) == []
