"""Matting head weight files: metadata round trip, mismatch and corruption errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from diffumatting.matting_head.network import MattingHead
from diffumatting.matting_head.taesd import random_tiny_autoencoder
from diffumatting.matting_head.taps import tap_spec
from diffumatting.matting_head.weights import (HeadMismatchError, check_compatible, load_head, parse_metadata,
                                               save_head)

SMALL = {"lateral": [8, 8, 8, 8], "width_8": 8, "width_16": 8, "width_32": 8, "width_4": 8, "width_2": 8,
         "width_1": 8}


def _saved(tmp_path, seed=0):
    ae = random_tiny_autoencoder(4, 8, seed=seed)
    info = {**tap_spec(ae.decoder).info(), "name": "random-taesd"}
    head = MattingHead(info["tap_channels"], SMALL)
    torch.nn.init.normal_(head.stage1[-1].weight)
    path = tmp_path / "head.safetensors"
    save_head(path, head, info, {"steps": 3, "subjects": ["a"]})
    return path, head, info, ae


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path, head, info, _ = _saved(tmp_path)
    loaded, meta = load_head(path)
    for (k, v), (k2, v2) in zip(head.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert meta["decoder_family"] == "taesd" and meta["latent_channels"] == 4
    assert meta["taps"] == info["taps"] and meta["tap_channels"] == [8, 8, 8, 8]
    assert meta["decoder_fingerprint"] == info["fingerprint"] and meta["version"] == 1
    assert meta["training"]["steps"] == 3 and meta["config"]["width_8"] == 8
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert not list(tmp_path.glob(".*partial*")), "atomic write left a temp file"


def test_compatible_decoder_passes_and_mismatches_are_clear(tmp_path):
    path, _, info, ae = _saved(tmp_path, seed=1)
    _, meta = load_head(path)
    check_compatible(meta, tap_spec(ae.decoder).info())
    other_weights = tap_spec(random_tiny_autoencoder(4, 8, seed=2).decoder).info()
    with pytest.raises(HeadMismatchError, match="different decoder weights"):
        check_compatible(meta, other_weights)
    check_compatible(meta, other_weights, strict_weights=False)
    with pytest.raises(HeadMismatchError, match="16-channel latents|4-channel latents"):
        check_compatible(meta, tap_spec(random_tiny_autoencoder(16, 8).decoder).info())
    with pytest.raises(HeadMismatchError, match="taps with"):
        check_compatible(meta, tap_spec(random_tiny_autoencoder(4, 16, seed=1).decoder).info())
    kl = {**info, "family": "autoencoderkl"}
    with pytest.raises(HeadMismatchError, match="autoencoderkl"):
        check_compatible(meta, kl)
    assert issubclass(HeadMismatchError, ValueError)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_head(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_head(bad)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 1)}, lora)
    with pytest.raises(ValueError, match="not a DiffuMatting matting head"):
        load_head(lora)


def test_truncated_file_is_rejected(tmp_path):
    path, *_ = _saved(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_head(cut)


def test_metadata_problems(tmp_path):
    path, head, info, _ = _saved(tmp_path)
    with pytest.raises(ValueError, match="version"):
        parse_metadata({"format": "diffumatting.matting_head", "version": "99", "taps": "[]"})
    with pytest.raises(ValueError, match="taps"):
        parse_metadata({"format": "diffumatting.matting_head", "version": "1"})
    # weights that do not fit the architecture in the metadata
    sd = {k: v for k, v in head.state_dict().items() if not k.startswith("stage1")}
    meta = {"format": "diffumatting.matting_head", "version": "1", "decoder_family": "taesd",
            "latent_channels": "4", "taps": json.dumps(info["taps"]), "tap_channels": json.dumps([8] * 4),
            "config": json.dumps(head.config)}
    partial = tmp_path / "partial.safetensors"
    save_file(sd, partial, metadata=meta)
    with pytest.raises(ValueError, match="do not match"):
        load_head(partial)
    # NaN weights
    sd = dict(head.state_dict())
    sd["stage1.4.bias"] = torch.full_like(sd["stage1.4.bias"], float("nan"))
    nan = tmp_path / "nan.safetensors"
    save_file(sd, nan, metadata=meta)
    with pytest.raises(ValueError, match="NaN"):
        load_head(nan)


def test_prior_kind_round_trips_and_older_files_default_to_colour_difference(tmp_path):
    ae = random_tiny_autoencoder(4, 8, seed=0)
    info = {**tap_spec(ae.decoder).info(), "name": "random-taesd"}
    head = MattingHead(info["tap_channels"], {**SMALL, "prior": "greenpost"})
    save_head(tmp_path / "gp.safetensors", head, info, {"steps": 1})
    loaded, meta = load_head(tmp_path / "gp.safetensors")
    assert loaded.config["prior"] == "greenpost" and meta["config"]["prior"] == "greenpost"
    # a file written before priors existed: its config has no "prior" key
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gp.safetensors"), "pt") as f:
        meta_raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta_raw["config"])
    del cfg["prior"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**meta_raw, "config": json.dumps(cfg)})
    old = load_head(tmp_path / "old.safetensors")[0]
    assert old.config["prior"] == "colour_difference"
    with pytest.raises(ValueError, match="config prior"):
        MattingHead(info["tap_channels"], {**SMALL, "prior": "magic"})


def _crafted(tmp_path, head, info, name, **meta_changes):
    """The head's weights with its metadata changed (a valid safetensors file) -> path."""
    meta = {"format": "diffumatting.matting_head", "version": "1", "decoder_family": "taesd",
            "latent_channels": "4", "taps": json.dumps(info["taps"]), "tap_channels": json.dumps([8] * 4),
            "config": json.dumps(head.config)}
    meta.update(meta_changes)
    path = tmp_path / f"{name}.safetensors"
    save_file(dict(head.state_dict()), str(path), metadata=meta)
    return path


@pytest.mark.parametrize("change,field", [
    ({"config": {"width_16": 200000}}, "width_16"), ({"config": {"blocks_32": "many"}}, "blocks_32"),
    ({"config": {"lateral": [8, 8, 8]}}, "lateral"), ({"config": {"predict_fg": "yes"}}, "predict_fg"),
    ({"config": {"width_9": 8}}, "width_9"), ({"latent_channels": "abc"}, "latent_channels"),
    ({"latent_channels": "100000"}, "latent_channels"), ({"tap_channels": json.dumps([8, 8, 8, 10 ** 9])}, "tap_channels"),
    ({"tap_channels": json.dumps([16, 8, 8, 8])}, "tap_channels"), ({"taps": json.dumps(["1"])}, "taps")])
def test_crafted_metadata_is_refused_naming_the_file_and_field_before_allocation(tmp_path, monkeypatch, change,
                                                                               field):
    """#19 N10 / S3: absurd or mistyped metadata gives a clear ValueError naming the file and the field, and no
    real-size network is built for it (only shapes on the meta device)."""
    from diffumatting.matting_head import weights

    path, head, info, _ = _saved(tmp_path)
    meta = dict(change)
    if "config" in meta:
        meta["config"] = json.dumps({**head.config, **meta["config"]})
    bad = _crafted(tmp_path, head, info, "crafted", **meta)
    built = []
    real = weights.MattingHead

    def spy(*a, **kw):
        m = real(*a, **kw)
        built.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr(weights, "MattingHead", spy)
    with pytest.raises(ValueError) as err:
        load_head(bad)
    message = str(err.value)
    assert "crafted.safetensors" in message and field in message, message
    assert "cpu" not in built, "a network was allocated before the metadata was checked"


def test_save_head_refuses_non_finite_weights_and_fp16_overflow(tmp_path):
    """#19 H6: 2.4e30 is finite in fp32 but inf in the fp16 head file: refused, nothing written."""
    path, head, info, _ = _saved(tmp_path)
    with torch.no_grad():
        head.stage1[-1].bias.fill_(2.4e30)
    with pytest.raises(ValueError, match="stage1.4.bias.*NaN or infinite.*float16"):
        save_head(tmp_path / "big.safetensors", head, info, dtype=torch.float16)
    assert not (tmp_path / "big.safetensors").exists() and not list(tmp_path.glob(".*partial*"))
    save_head(tmp_path / "big32.safetensors", head, info)  # fine in fp32
    with torch.no_grad():
        head.stage1[-1].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        save_head(tmp_path / "nan.safetensors", head, info)


def test_committed_head_still_loads_with_identical_weights_and_outputs():
    """The committed TAEF2 head (head weights format, not a training checkpoint) loads unchanged."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(__file__).resolve().parents[2] / "weights" / "diffumatting_head_taef2.safetensors"
    head, meta = load_head(path)
    raw = load_file(str(path))
    assert raw.keys() == head.state_dict().keys()
    for k, v in head.state_dict().items():
        assert torch.equal(v, raw[k].float()), k
    direct = MattingHead(meta["tap_channels"], meta["config"]).eval()
    direct.load_state_dict({k: v.float() for k, v in raw.items()})
    g = torch.Generator().manual_seed(0)
    taps = [torch.randn(1, c, 32 // s, 32 // s, generator=g) for c, s in zip(meta["tap_channels"], (8, 4, 2, 1))]
    rgb = torch.rand(1, 3, 32, 32, generator=g)
    ka = torch.rand(1, 1, 32, 32, generator=g)
    with torch.no_grad():
        a, b = head(taps, rgb, ka), direct(taps, rgb, ka)
    assert torch.equal(a["alpha"], b["alpha"]) and torch.equal(a["fg"], b["fg"])
