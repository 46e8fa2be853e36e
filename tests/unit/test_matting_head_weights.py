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
