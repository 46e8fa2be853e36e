"""Head training: a few steps on a tiny random TAESD-layout decoder; checkpoints, resume, final file."""

from __future__ import annotations

import torch
from safetensors import safe_open

from diffumatting.matting_head.data import Pair, green_canvas, load_pairs, random_crop
from diffumatting.matting_head.procedural import procedural_matte
from diffumatting.matting_head.train import TaesdBackend, TrainConfig, head_loss, train_head
from diffumatting.matting_head.taesd import random_tiny_autoencoder
from diffumatting.matting_head.weights import load_head

SMALL = {"lateral": [8, 8, 8, 8], "width_8": 8, "width_16": 8, "width_32": 8, "width_4": 8, "width_2": 8,
         "width_1": 8}


def _cfg(tmp_path, steps, **kw):
    return TrainConfig(out=str(tmp_path / "head.safetensors"), steps=steps, batch=2, crop=32, buffer=6,
                       buffer_init=4, refresh=1, ckpt_every=2, head_config=SMALL, seed=5, **kw)


def _pairs():
    fg, a = procedural_matte(48, 3)
    return [Pair("blob", fg, a)]


def test_train_writes_checkpoints_and_final_head(tmp_path):
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    out = train_head(backend, _pairs(), _cfg(tmp_path, 3), progress=False, log_fn=lambda *_: None)
    head, meta = load_head(out)
    assert meta["training"]["steps"] == 3 and meta["training"]["subjects"] == ["blob"]
    assert meta["decoder_fingerprint"] == backend.spec.fingerprint
    ckpt = tmp_path / "head.ckpt.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        assert f.metadata()["step"] == "3"
        assert any(k.startswith("opt.") for k in f.keys())
    assert not list(tmp_path.glob(".*partial*"))


def test_resume_continues_from_the_checkpoint(tmp_path):
    """A run stopped after 2 steps (as if killed after its checkpoint) resumes at step 2, with the saved weights
    and Adam moments, and finishes the planned steps."""
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    logs = []
    train_head(backend, _pairs(), _cfg(tmp_path, 2), progress=False, log_fn=logs.append)
    ckpt = tmp_path / "head.ckpt.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        saved = {k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("head.")}
    # the final head after 2 steps equals the checkpointed weights (the final file is stored in fp16)
    h2, _ = load_head(tmp_path / "head.safetensors")
    for k, v in h2.state_dict().items():
        assert torch.equal(v, saved[k].to(torch.float16).to(v.dtype)), k
    logs.clear()
    train_head(backend, _pairs(), _cfg(tmp_path, 4), progress=False, log_fn=logs.append)
    assert any("resumed" in line and "step 2" in line for line in logs), logs
    h4, meta = load_head(tmp_path / "head.safetensors")
    assert meta["training"]["steps"] == 4
    assert any(not torch.equal(v, saved[k]) for k, v in h4.state_dict().items()), "resumed run did not train"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    import pytest

    (tmp_path / "head.ckpt.safetensors").write_bytes(b"junk")
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    with pytest.raises(ValueError, match="resume"):
        train_head(backend, _pairs(), _cfg(tmp_path, 2), progress=False, log_fn=lambda *_: None)


def test_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    a = procedural_matte(32, 1)[1][None]
    fg = torch.rand(1, 3, 32, 32)
    canvas = green_canvas(32, 32, (0, 1, 0), False)[None]
    image = a * fg + (1 - a) * canvas
    loss, _ = head_loss({"alpha": a, "fg": fg}, a, fg, canvas, image)
    assert loss.item() < 1e-6
    worse, _ = head_loss({"alpha": (a + 0.2).clamp(0, 1), "fg": fg}, a, fg, canvas, image)
    assert worse.item() > 0.05


def test_data_helpers(tmp_path):
    from diffumatting.common.images import save_png

    d = tmp_path / "subj"
    d.mkdir()
    fg, a = procedural_matte(40, 2)
    save_png(d / "image.png", fg)
    save_png(d / "alpha.png", a.expand(3, -1, -1))
    pairs = load_pairs(tmp_path)
    assert pairs[0].name == "subj" and pairs[0].alpha.shape == (1, 40, 40)
    g = torch.Generator().manual_seed(0)
    cf, ca = random_crop(pairs[0].fg, pairs[0].alpha, 64, g)  # bigger than the image: padded
    assert cf.shape == (3, 64, 64) and ca.shape == (1, 64, 64)
    c = green_canvas(16, 16, (0, 1, 0), True, g)
    assert c.shape == (3, 16, 16) and 0 <= c.min() and c.max() <= 1 and c.std() > 0
    import pytest

    with pytest.raises(ValueError, match="no \\(fg or image, alpha\\) pairs"):
        load_pairs(d)


def test_procedural_mattes_are_deterministic_in_range_and_include_fine_structure():
    from diffumatting.matting_head.procedural import _feathers

    fg, a = procedural_matte((40, 56), 11)
    fg2, a2 = procedural_matte((40, 56), 11)
    assert fg.shape == (3, 40, 56) and a.shape == (1, 40, 56)
    assert torch.equal(fg, fg2) and torch.equal(a, a2)
    assert 0 <= float(fg.min()) and float(fg.max()) <= 1 and 0 <= float(a.min()) and float(a.max()) <= 1
    # feathers: sub-pixel shafts and barbs -> mostly partial coverage where there is any coverage at all
    fractions = []
    for seed in range(6):
        f = _feathers(torch.Generator().manual_seed(seed), 96, 96)
        assert f.shape == (96, 96) and 0 <= float(f.min()) and float(f.max()) <= 1
        covered = f > 0.02
        assert covered.float().mean() > 0.02, "a feather matte should cover part of the crop"
        fractions.append(float(((f > 0.02) & (f < 0.98)).sum() / covered.sum()))
    assert sum(fractions) / len(fractions) > 0.5
    # the mix draws every kind: over many seeds some mattes are mostly partial coverage (feathers)
    partial = [float(((m > 0.02) & (m < 0.98)).float().mean() / (m > 0.02).float().mean().clamp_min(1e-6))
               for m in (procedural_matte(64, s)[1] for s in range(24))]
    assert max(partial) > 0.6 and min(partial) < 0.3


def test_loss_weights_select_terms_and_unknown_terms_are_an_error(tmp_path):
    import pytest

    a = procedural_matte(32, 1)[1][None]
    fg = torch.rand(1, 3, 32, 32)
    canvas = green_canvas(32, 32, (0, 1, 0), False)[None]
    image = a * fg + (1 - a) * canvas
    pred = {"alpha": (a + 0.1).clamp(0, 1), "fg": fg}
    only_mse = {k: 0.0 for k in ("l1", "lap", "grad", "comp", "fg")}
    loss, parts = head_loss(pred, a, fg, canvas, image, {**only_mse, "l2": 2.0})
    assert loss.item() == pytest.approx(2 * parts["l2"], rel=1e-6) and parts["l2"] > 0
    default, _ = head_loss(pred, a, fg, canvas, image)
    assert default.item() > loss.item()
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    with pytest.raises(ValueError, match="unknown term"):
        train_head(backend, _pairs(), _cfg(tmp_path, 1, loss_weights={"sharpness": 1.0}), progress=False,
                   log_fn=lambda *_: None)


def test_init_starts_from_a_head_file_and_checks_the_decoder(tmp_path):
    import pytest

    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    first = train_head(backend, _pairs(), _cfg(tmp_path / "a", 3), progress=False, log_fn=lambda *_: None)
    start, _ = load_head(first)
    # zero steps from --init: the written head is the start head
    out = train_head(backend, _pairs(), _cfg(tmp_path / "b", 0, init=first), progress=False, log_fn=lambda *_: None)
    same, meta = load_head(out)
    for k, v in start.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k
    assert meta["training"]["init"]["file"] == "head.safetensors" and meta["training"]["init"]["steps"] == 3
    # two steps of fine-tuning change it, with the start head's architecture
    out = train_head(backend, _pairs(), _cfg(tmp_path / "c", 2, init=first), progress=False, log_fn=lambda *_: None)
    tuned, meta = load_head(out)
    assert tuned.config == start.config
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    other = TaesdBackend(random_tiny_autoencoder(4, 8, seed=2), "other-taesd")  # same layout, other weights
    with pytest.raises(ValueError, match="different decoder weights"):
        train_head(other, _pairs(), _cfg(tmp_path / "d", 1, init=first), progress=False, log_fn=lambda *_: None)


def test_train_head_cli_rejects_bad_loss_weights_and_missing_init(tmp_path, capsys):
    import pytest

    from diffumatting.cli import CLIError
    from diffumatting.cli.commands.train_head import _loss_weights

    assert _loss_weights("l2=16, grad=0") == {"l2": 16.0, "grad": 0.0} and _loss_weights("") == {}
    for bad in ("l2", "sharp=1", "l2=-1", "l2=x", "l2=nan"):
        with pytest.raises(CLIError, match="--loss-weights"):
            _loss_weights(bad)
    from diffumatting.cli import main

    rc = main(["train-head", "--taesd", str(tmp_path), "--out", str(tmp_path / "h.safetensors"),
               "--init", str(tmp_path / "nope.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "--init" in err and "does not exist" in err
    for flag, value, says in (("--device", "gpu", "expected cpu, cuda"), ("--workers", "-1", "0 or more")):
        rc = main(["train-head", "--taesd", str(tmp_path), "--out", str(tmp_path / "h.safetensors"), flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and flag in err and says in err, err


def test_samples_are_the_same_with_worker_processes_and_after_a_resume_point():
    """Sample k is a pure function of (seed, k): two worker processes give the in-process stream, and a maker that
    starts at index 3 (as after a resume) continues it instead of repeating it."""
    from diffumatting.matting_head.train import SampleMaker

    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    cfg = TrainConfig(out="unused.safetensors", crop=32, seed=5, synthetic_fraction=0.5)
    inline = SampleMaker(backend, _pairs(), cfg)
    first = inline.make(3) + inline.make(3)
    pooled = SampleMaker(backend, _pairs(), TrainConfig(**{**cfg.__dict__, "workers": 2}))
    try:
        again = pooled.make(4) + pooled.make(2)
    finally:
        pooled.close()
    later = SampleMaker(backend, _pairs(), cfg, made=3).make(3)
    for a, b in zip(first, again):
        for k in ("rgb", "alpha", "fg", "canvas", "key"):
            assert torch.equal(a[k], b[k]), k
        assert all(torch.equal(x, y) for x, y in zip(a["taps"], b["taps"]))
    assert all(torch.equal(a["alpha"], b["alpha"]) for a, b in zip(first[3:], later))
    assert not torch.equal(first[0]["alpha"], first[1]["alpha"])  # distinct samples, not one repeated


def test_training_with_workers_writes_a_head(tmp_path):
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    out = train_head(backend, _pairs(), _cfg(tmp_path, 2, workers=2), progress=False, log_fn=lambda *_: None)
    _, meta = load_head(out)
    assert meta["training"]["steps"] == 2 and meta["training"]["device"] == "cpu"


def test_bad_device_and_workers_are_clear_errors(tmp_path):
    import pytest

    from diffumatting.matting_head.train import check_device

    assert check_device("cpu").type == "cpu"
    assert check_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected cpu, cuda"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    with pytest.raises(ValueError, match="workers"):
        train_head(backend, _pairs(), _cfg(tmp_path, 1, workers=-1), progress=False, log_fn=lambda *_: None)


def test_workers_without_fork_are_a_clear_error(tmp_path, monkeypatch):
    import multiprocessing

    import pytest

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    backend = TaesdBackend(random_tiny_autoencoder(4, 8, seed=1), "random-taesd")
    with pytest.raises(ValueError, match="fork"):
        train_head(backend, _pairs(), _cfg(tmp_path, 1, workers=2), progress=False, log_fn=lambda *_: None)
