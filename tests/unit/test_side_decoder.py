"""The side-decoder set-up of issue 15 (train-head --taesd DIR --head-image original): the head reads the original
composite beside the tiny decoder's features of its latent; heads record it and resume refuses a mix."""

from __future__ import annotations

import pytest
import torch

from diffumatting.matting_head.weights import load_head
from diffumatting.trainer import checkpoint
from diffumatting.trainer.head import ConfigError, SampleMaker, TaesdBackend, train_head
from diffumatting.trainer.head_eval import prepare_eval

QUIET = dict(progress=False, log_fn=lambda line: None)


def test_an_unknown_head_image_is_refused_naming_the_field(tiny_taesd):
    with pytest.raises(ConfigError, match="head_image"):
        TaesdBackend(tiny_taesd, "t", head_image="latent")


def test_the_head_reads_the_composite_and_the_taps_come_from_the_decoder(tiny_taesd, tiny_pairs, head_config, tmp_path):
    cfg = head_config(tmp_path / "unused.safetensors", 1, noise_fraction=0.0)
    decoded = SampleMaker(TaesdBackend(tiny_taesd, "t"), tiny_pairs, cfg).make(3)
    side = SampleMaker(TaesdBackend(tiny_taesd, "t", head_image="original"), tiny_pairs, cfg).make(3)
    crops = SampleMaker(TaesdBackend(tiny_taesd, "t"), tiny_pairs, cfg)._crops(3)  # the same stream of composites
    for d, s, c in zip(decoded, side, crops):
        assert torch.equal(s["rgb"], c["image"].half())  # the composite itself
        assert not torch.equal(d["rgb"], s["rgb"])  # not the tiny decoder's output
        for td, ts in zip(d["taps"], s["taps"]):
            assert torch.equal(td, ts)  # the same decoder features either way


def test_evaluation_prepares_the_same_inputs(tiny_taesd, tiny_pairs):
    item = prepare_eval(TaesdBackend(tiny_taesd, "t", head_image="original"), tiny_pairs)[0]
    assert torch.equal(item["rgb"], item["image"]) and len(item["taps"]) == 4


def test_the_head_file_records_it_and_resume_refuses_a_mix(tiny_taesd, tiny_pairs, head_config, tmp_path):
    out = tmp_path / "side.safetensors"
    train_head(TaesdBackend(tiny_taesd, "t", head_image="original"), tiny_pairs, head_config(out, 2), **QUIET)
    _, info = load_head(out)
    assert info["head_image"] == "original"
    with pytest.raises(checkpoint.CheckpointError, match="image the head reads"):
        train_head(TaesdBackend(tiny_taesd, "t"), tiny_pairs, head_config(out, 4), **QUIET)


def test_the_cli_takes_head_image_only_with_a_tiny_decoder(tmp_path, capsys):
    from diffumatting.cli import main

    rc = main(["train-head", "--image-only", "--head-image", "original", "--synthetic-only",
               "--out", str(tmp_path / "k.safetensors")])
    assert rc == 2 and "--head-image: only with --taesd" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
