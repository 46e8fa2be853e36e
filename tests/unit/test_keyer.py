"""The image-only keyer (matting_head network in "image" mode) and GreenPost's learned mode (matting_head.refine)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from diffumatting.matting_head.network import IMAGE_CONFIG, MattingHead
from diffumatting.matting_head.refine import (KEYER_FILE, KeyerWarning, key_image, learned_green_post, load_keyer,
                                              refine_alpha, resolve_keyer)
from diffumatting.matting_head.weights import IMAGE_ONLY_DECODER, load_head, save_head

SMALL = {**IMAGE_CONFIG, "lateral": [8, 8, 8, 4], "width_8": 8, "width_16": 8, "width_32": 8, "width_4": 8,
         "width_2": 8, "width_1": 4}


def _green_scene(h=96, w=128, seed=0):
    """A soft disc on chroma green: image [1,3,h,w] and its true alpha [1,1,h,w]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    r = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2).sqrt()
    a = (1 - (r - h / 4) / 6).clamp(0, 1)[None, None]
    fg = torch.tensor([0.8, 0.3, 0.2]).view(1, 3, 1, 1) + 0.05 * torch.rand(1, 3, h, w, generator=g)
    bg = torch.tensor([0.0, 0.69, 0.25]).view(1, 3, 1, 1)
    return (a * fg + (1 - a) * bg).clamp(0, 1), a


def _randomised(head: MattingHead, seed=1) -> MattingHead:
    """A head whose output layer is not zero (a fresh head reproduces its prior exactly)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        head.stage1[-1].weight.normal_(0, 0.3)
        head.stage1[-1].bias.fill_(-3.0)  # opaque pixels become visibly less opaque
    return head.eval()


def test_image_only_head_starts_as_its_prior_and_needs_the_key():
    img, _ = _green_scene()
    prior = torch.rand(1, 1, *img.shape[-2:])
    head = MattingHead(None, SMALL).eval()
    assert head.image_only and not head.predicts_fg and not hasattr(head, "lateral")
    with torch.no_grad():
        out = head(None, img, prior, key=torch.tensor([[0.0, 0.69, 0.25]]))
    assert out["alpha"].shape == (1, 1, 96, 128)
    inner = prior.clamp(1e-3, 1 - 1e-3)  # the logit clamp of the prior
    assert torch.allclose(out["alpha"], torch.sigmoid(torch.logit(inner).clamp(-6, 6)), atol=1e-5)
    with pytest.raises(ValueError, match="key"):
        head(None, img, prior)
    with pytest.raises(ValueError, match="tap_channels"):
        MattingHead([8, 8, 8, 8], SMALL)


def test_keyer_file_round_trip_and_refusals(tmp_path):
    head = _randomised(MattingHead(None, SMALL))
    path = tmp_path / "keyer.safetensors"
    save_head(path, head, IMAGE_ONLY_DECODER, {"subjects": ["a"]})
    loaded, info = load_head(path)
    assert loaded.image_only and info["taps"] == [] and info["config"]["inputs"] == "image"
    img, _ = _green_scene()
    prior, key = torch.rand(1, 1, 96, 128), torch.tensor([[0.0, 0.69, 0.25]])
    with torch.no_grad():
        assert torch.allclose(loaded(None, img, prior, key=key)["alpha"], head(None, img, prior, key=key)["alpha"])
    assert load_keyer(path) is load_keyer(path)  # cached
    # a decoder head is not a keyer
    dec = MattingHead([8, 8, 8, 8], {"lateral": [4, 4, 4, 4], "width_8": 4, "width_16": 4, "width_32": 4,
                                      "width_4": 4, "width_2": 4, "width_1": 4})
    dpath = tmp_path / "decoder_head.safetensors"
    save_head(dpath, dec, {"family": "taesd", "name": "x", "latent_channels": 4, "taps": ["a", "b", "c", "d"],
                           "tap_channels": [8, 8, 8, 8]})
    with pytest.raises(ValueError, match="decoder_head.safetensors.*not the image-only keyer"):
        load_keyer(dpath)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        resolve_keyer("learned", bad)
    with pytest.raises(ValueError, match="missing.safetensors does not exist"):
        resolve_keyer("learned", tmp_path / "missing.safetensors")
    with pytest.warns(KeyerWarning, match="corrupt.safetensors.*classical"):
        assert resolve_keyer("auto", bad) is None
    assert resolve_keyer("classical", bad) is None
    with pytest.raises(ValueError, match="mode: expected one of auto, learned, classical"):
        resolve_keyer("fast")


def test_tiled_refinement_matches_the_whole_image_within_tolerance():
    img, _ = _green_scene(300, 420)
    prior = torch.rand(1, 1, 300, 420)
    head = _randomised(MattingHead(None, SMALL))
    whole = refine_alpha(head, img, prior, torch.tensor([0.0, 0.69, 0.25]), tile=2048)
    calls = []
    tiled = refine_alpha(head, img, prior, torch.tensor([0.0, 0.69, 0.25]), tile=160, overlap=48,
                         on_tile=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(calls), len(calls)) and len(calls) == 3 * 4
    err = (tiled - whole).abs()
    assert float(err.max()) < 0.1 and float(err.mean()) < 0.01  # the README's stated tiling tolerance
    with pytest.raises(ValueError, match="prior: expected"):
        refine_alpha(head, img, prior[..., :10], torch.tensor([0.0, 1.0, 0.0]))


def test_key_image_dispatch_names_what_ran():
    img, _ = _green_scene()
    head = _randomised(MattingHead(None, SMALL))
    classical = key_image(img, None)
    learned = key_image(img, head)
    given = key_image(img, head, alpha=torch.ones(1, 1, 96, 128))
    assert classical.extras["keyer"] == "classical" and learned.extras["keyer"] == "learned"
    assert given.extras["keyer"] == "given alpha" and float(given.alpha.min()) > 0.99
    assert not torch.allclose(classical.alpha, learned.alpha)  # the keyer changed the alpha
    # no screen to key against: GreenPost's opaque result, the keyer not run
    grey = torch.full((1, 3, 64, 64), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = learned_green_post(grey, head)
    assert res.extras["keyer"].startswith("classical") and float(res.alpha.min()) == 1.0


@pytest.mark.skipif(not KEYER_FILE.is_file(), reason=f"no shipped keyer at {KEYER_FILE}")
def test_shipped_keyer_is_small_says_its_data_terms_and_keys_a_soft_edge():
    head, info = load_head(KEYER_FILE)
    assert head.image_only and KEYER_FILE.stat().st_size < 5e6
    training = info["training"]
    # the default file has no third-party data terms; the research one says it has them
    assert "synthetic mattes only" in training["data_terms"] and not training["subjects"]
    research = KEYER_FILE.with_name("diffumatting_keyer_research.safetensors")
    r_head, r_info = load_head(research)
    assert r_head.image_only and research.stat().st_size < 5e6
    assert "research" in r_info["training"]["data_terms"] and len(r_info["training"]["subjects"]) == 43
    img, a = _green_scene(192, 256)
    classical = key_image(img, None)
    learned = key_image(img, load_keyer())
    # a clean soft disc: both keep the matte (MSE x1e3 0.014 classical, 0.032 learned when this test was written);
    # the cross-validated comparison on real mattes is bench/keying.py's job (README, "Learned keyer")
    assert torch.mean((classical.alpha - a) ** 2) < 1e-4 and torch.mean((learned.alpha - a) ** 2) < 1e-4


def test_train_head_image_only_fold(tmp_path, mattes_dir, capsys):
    from diffumatting.cli import main
    from diffumatting.cli.commands.train_head import fold_subjects

    out = tmp_path / "keyer.safetensors"
    rc = main(["train-head", "--image-only", "--data", str(mattes_dir), "--fold", "1/5", "--out", str(out),
               "--steps", "2", "--batch", "2", "--crop", "64", "--buffer", "4", "--ckpt-every", "1", "--no-monitor",
               "--no-progress", "--threads", "1"])
    assert rc == 0
    head, info = load_head(out)
    names = sorted(p.name for p in Path(mattes_dir).iterdir() if (p / "alpha.png").is_file())
    held = fold_subjects(names, (1, 5))
    training = info["training"]
    assert head.image_only and training["holdout"] == held and not set(held) & set(training["subjects"])
    assert sorted(training["subjects"] + held) == names and training["fold"] == "1/5"
    for bad, msg in (("5/5", "0 <= I < K"), ("x", "expected I/K")):
        assert main(["train-head", "--image-only", "--data", str(mattes_dir), "--fold", bad, "--out",
                     str(tmp_path / "b.safetensors")]) != 0
        assert msg in capsys.readouterr().err


def test_cli_key_classical_by_default_learned_switch_and_bad_keyer(tmp_path, capsys):
    from diffumatting.cli import main
    from diffumatting.common.images import load_image, save_png
    from diffumatting.greenpost import green_post

    img, _ = _green_scene()
    src = tmp_path / "in.png"
    save_png(str(src), img[0], None, bits=16)
    keyer = tmp_path / "keyer.safetensors"
    save_head(keyer, _randomised(MattingHead(None, SMALL)), IMAGE_ONLY_DECODER, {})
    assert main(["key", str(src), "-o", str(tmp_path / "c"), "--alpha-only"]) == 0
    assert main(["key", str(src), "-o", str(tmp_path / "l"), "--keyer", str(keyer), "--alpha-only"]) == 0
    rgb = load_image(str(src)).rgb[None]
    classical = load_image(str(tmp_path / "c" / "in_alpha.png")).rgb[:1]
    learned = load_image(str(tmp_path / "l" / "in_alpha.png")).rgb[:1]
    assert torch.allclose(classical, green_post(rgb).alpha[0], atol=1 / 255)
    want = key_image(rgb, load_keyer(keyer)).alpha[0]
    assert torch.allclose(learned, want, atol=1 / 255) and not torch.allclose(learned, classical, atol=1 / 255)
    capsys.readouterr()
    assert main(["key", str(src), "-o", str(tmp_path / "x"), "--keyer", str(tmp_path / "nope.safetensors")]) != 0
    err = capsys.readouterr().err
    assert "--keyer" in err and "nope.safetensors does not exist" in err and not (tmp_path / "x").exists()
