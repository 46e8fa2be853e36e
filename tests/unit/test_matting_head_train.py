"""Head training (trainer/head.py) on a tiny random TAESD-layout decoder: checkpoints, resume, init, bad input.

The trained head is built once per session (``trained_head`` in tests/conftest.py); the tests that train on
copy its files first.
"""

from __future__ import annotations

import errno
import shutil

import pytest
import torch

from diffumatting.trainer import checkpoint
from diffumatting.trainer.augment import green_canvas
from diffumatting.trainer.head import (CKPT_KIND, ConfigError, SampleMaker, TaesdBackend, TrainConfig, check_device,
                                       head_loss, train_head)
from diffumatting.matting_head.taesd import random_tiny_autoencoder
from diffumatting.matting_head.weights import load_head
from diffumatting.synthetic import synthetic_matte

QUIET = {"progress": False, "log_fn": lambda *_: None}


def _copy_run(trained_head, dst):
    """The trained head's files copied to dst/head.safetensors (+ its checkpoint) -> the head path."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_head.path, dst / "head.safetensors")
    shutil.copy(trained_head.ckpt, dst / "head.ckpt.safetensors")
    return dst / "head.safetensors"


def test_training_writes_checkpoint_and_final_head(trained_head, tiny_backend):
    head, meta = load_head(trained_head.path)
    assert meta["training"]["steps"] == 3 and meta["training"]["subjects"] == ["blob"]
    assert meta["decoder_fingerprint"] == tiny_backend.spec.fingerprint
    state = checkpoint.load(trained_head.ckpt, CKPT_KIND)
    info = state["info"]
    assert info["step"] == 3 and info["decoder"]["fingerprint"] == tiny_backend.spec.fingerprint
    assert info["head_config"] == head.config and info["decoder"]["tap_channels"] == [8, 8, 8, 8]
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 3 and "loop" in state["rng"]
    # the final head is the checkpointed weights (stored in fp16)
    for k, v in head.state_dict().items():
        assert torch.equal(v, state["model"][k].to(torch.float16).to(v.dtype)), k
    assert not list(trained_head.folder.glob(".*partial*"))
    assert any('"step": 2' in line for line in trained_head.logs)


def test_resume_continues_from_the_checkpoint_and_cleans_stale_temp_files(trained_head, tiny_backend, tiny_pairs,
                                                                         head_config, tmp_path):
    out = _copy_run(trained_head, tmp_path)
    stale = tmp_path / ".head.ckpt.safetensors.x1y2z3.partial.safetensors"  # left by a save killed mid-write
    stale.write_bytes(b"")
    saved = checkpoint.load(trained_head.ckpt, CKPT_KIND)["model"]
    logs = []
    train_head(tiny_backend, tiny_pairs, head_config(out, 4), progress=False, log_fn=logs.append)
    assert any("resumed" in line and "step 3" in line for line in logs), logs
    assert not stale.exists()
    h4, meta = load_head(out)
    assert meta["training"]["steps"] == 4
    assert any(not torch.equal(v, saved[k].to(torch.float16).float()) for k, v in h4.state_dict().items())


def test_the_sample_stream_is_the_same_across_a_resume(trained_head, tiny_backend, tiny_pairs, head_config, tmp_path):
    """The resumed run continues at the checkpoint's sample index (made), not at 0."""
    state = checkpoint.load(trained_head.ckpt, CKPT_KIND)
    made = state["info"]["made"]
    assert made == trained_head.cfg.buffer_init + 3  # the initial buffer plus one refresh per step
    cfg = head_config(tmp_path / "unused.safetensors", 1)
    fresh = SampleMaker(tiny_backend, tiny_pairs, cfg)
    stream = fresh.make(made + 2)
    later = SampleMaker(tiny_backend, tiny_pairs, cfg, made=made).make(2)
    assert all(torch.equal(a["alpha"], b["alpha"]) for a, b in zip(stream[made:], later))


@pytest.mark.parametrize("content,says", [(b"junk", "not readable"), (None, "older version")])
def test_corrupt_or_old_format_checkpoint_is_refused_naming_the_file(tmp_path, tiny_backend, tiny_pairs,
                                                                     head_config, content, says):
    ckpt = tmp_path / "head.ckpt.safetensors"
    if content is None:  # a checkpoint of the previous format: head/opt tensors, a plain "step" in the metadata
        from safetensors.torch import save_file

        save_file({"head.x": torch.zeros(1)}, str(ckpt), metadata={"step": "3", "config": "{}"})
    else:
        ckpt.write_bytes(content)
    with pytest.raises(ValueError, match=says) as err:
        train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "head.safetensors", 2), **QUIET)
    assert str(ckpt) in str(err.value) and "--no-resume" in str(err.value)


def test_resume_for_another_decoder_is_refused(trained_head, tiny_pairs, head_config, tmp_path):
    """#19 H10 (same tap widths, other weights) and H11 (other tap widths)."""
    same_widths = TaesdBackend(random_tiny_autoencoder(4, 8, seed=2), "other-taesd")
    other_widths = TaesdBackend(random_tiny_autoencoder(4, 16, seed=1), "wide-taesd")
    for backend, says in ((same_widths, "fingerprint"), (other_widths, "tap widths")):
        out = _copy_run(trained_head, tmp_path / backend.name)
        with pytest.raises(ValueError, match="another decoder") as err:
            train_head(backend, tiny_pairs, head_config(out, 5), **QUIET)
        assert says in str(err.value) and "--no-resume" in str(err.value)
        assert load_head(out)[1]["decoder_fingerprint"] != backend.spec.fingerprint  # left untouched


def test_init_starts_from_a_head_file_and_checks_the_decoder(trained_head, tiny_backend, tiny_pairs, head_config,
                                                             tmp_path):
    start, _ = load_head(trained_head.path)
    out = train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "b.safetensors", 0, init=str(trained_head.path)),
                     **QUIET)
    same, meta = load_head(out)
    for k, v in start.state_dict().items():  # zero steps from --init: the written head is the start head
        assert torch.equal(v, same.state_dict()[k]), k
    assert meta["training"]["init"]["file"] == "head.safetensors" and meta["training"]["init"]["steps"] == 3
    out = train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "c.safetensors", 1, init=str(trained_head.path)),
                     **QUIET)
    tuned, _ = load_head(out)
    assert tuned.config == start.config
    assert any(not torch.equal(v, tuned.state_dict()[k]) for k, v in start.state_dict().items())
    other = TaesdBackend(random_tiny_autoencoder(4, 8, seed=2), "other-taesd")  # same layout, other weights
    with pytest.raises(ValueError, match="different decoder weights"):
        train_head(other, tiny_pairs, head_config(tmp_path / "d.safetensors", 1, init=str(trained_head.path)), **QUIET)


def test_non_finite_weights_stop_the_run_and_write_nothing(tiny_backend, tiny_pairs, head_config, tmp_path,
                                                           monkeypatch):
    """#19 H6: weights that go non-finite stop the run with a clear error; no head, no checkpoint of them."""
    real_step = torch.optim.Adam.step

    def poisoned(self, *a, **kw):
        out = real_step(self, *a, **kw)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    with pytest.raises(ValueError, match="non-finite"):
        train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1, ckpt_every=1), **QUIET)
    assert not (tmp_path / "h.safetensors").exists() and not (tmp_path / "h.ckpt.safetensors").exists()


def test_output_problems_are_found_before_training(tiny_backend, tiny_pairs, head_config, tmp_path, monkeypatch):
    """#19 H7 (out is a folder), H8 (read-only folder), H9 (too little free space): errors up front, naming out."""
    import shutil as shutil_mod
    import tempfile

    made = []
    monkeypatch.setattr(SampleMaker, "make", lambda self, n, device=None: made.append(n) or [])
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ConfigError, match="is a folder") as err:
        train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "dir.safetensors", 1), **QUIET)
    assert err.value.field == "out"
    with monkeypatch.context() as m:
        m.setattr(shutil_mod, "disk_usage", lambda p: shutil_mod._ntuple_diskusage(10 << 30, 10 << 30, 1000))
        with pytest.raises(ConfigError, match="MiB free"):
            train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1), **QUIET)

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(ConfigError, match="read-only"):
            train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1), **QUIET)
    assert made == []  # no sample was made: nothing trained before the errors


def test_a_full_disk_during_the_run_is_a_clear_error_and_keeps_no_partial_file(tiny_backend, tiny_pairs,
                                                                               head_config, tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_bytes_durably", full)
    with pytest.raises(ValueError, match="could not write .*No space left on device"):
        train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1, ckpt_every=1), **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    a = synthetic_matte(32, 1, "fine")[1][None]
    fg = torch.rand(1, 3, 32, 32)
    canvas = green_canvas(32, 32, (0, 1, 0), False)[None]
    image = a * fg + (1 - a) * canvas
    loss, _ = head_loss({"alpha": a, "fg": fg}, a, fg, canvas, image)
    assert loss.item() < 1e-6
    worse, _ = head_loss({"alpha": (a + 0.2).clamp(0, 1), "fg": fg}, a, fg, canvas, image)
    assert worse.item() > 0.05


def test_loss_weights_select_terms_and_unknown_terms_are_an_error(tmp_path):
    a = synthetic_matte(32, 1, "fine")[1][None]
    fg = torch.rand(1, 3, 32, 32)
    canvas = green_canvas(32, 32, (0, 1, 0), False)[None]
    image = a * fg + (1 - a) * canvas
    pred = {"alpha": (a + 0.1).clamp(0, 1), "fg": fg}
    only_mse = {k: 0.0 for k in ("l1", "lap", "grad", "comp", "fg")}
    loss, parts = head_loss(pred, a, fg, canvas, image, {**only_mse, "l2": 2.0})
    assert loss.item() == pytest.approx(2 * parts["l2"], rel=1e-6) and parts["l2"] > 0
    default, _ = head_loss(pred, a, fg, canvas, image)
    assert default.item() > loss.item()
    with pytest.raises(ValueError, match="unknown term"):
        TrainConfig(out="h.safetensors", loss_weights={"sharpness": 1.0})


@pytest.mark.parametrize("field,value", [
    ("ckpt_every", 0), ("refresh_every", 0), ("batch", 0), ("crop", 100000), ("crop", 60), ("lr", 1e30),
    ("lr", -1.0), ("lr", float("nan")), ("steps", -5), ("workers", -1), ("buffer_init", 0),
    ("synthetic_fraction", 1.5)])
def test_bad_settings_name_their_field(field, value):
    with pytest.raises(ConfigError) as err:
        TrainConfig(out="h.safetensors", **{field: value})
    assert err.value.field == field and str(err.value).startswith(f"{field}: expected")


def test_samples_are_the_same_with_worker_processes_and_after_a_resume_point(tiny_backend, tiny_pairs):
    """Sample k is a pure function of (seed, k): two worker processes give the in-process stream, and a maker that
    starts at index 3 (as after a resume) continues it instead of repeating it."""
    cfg = TrainConfig(out="unused.safetensors", crop=32, seed=5, synthetic_fraction=0.5)
    inline = SampleMaker(tiny_backend, tiny_pairs, cfg)
    first = inline.make(3) + inline.make(3)
    pooled = SampleMaker(tiny_backend, tiny_pairs, TrainConfig(**{**cfg.__dict__, "workers": 2}))
    try:
        again = pooled.make(4) + pooled.make(2)
    finally:
        pooled.close()
    later = SampleMaker(tiny_backend, tiny_pairs, cfg, made=3).make(3)
    for a, b in zip(first, again):
        for k in ("rgb", "alpha", "fg", "canvas", "key"):
            assert torch.equal(a[k], b[k]), k
        assert all(torch.equal(x, y) for x, y in zip(a["taps"], b["taps"]))
    assert all(torch.equal(a["alpha"], b["alpha"]) for a, b in zip(first[3:], later))
    assert not torch.equal(first[0]["alpha"], first[1]["alpha"])  # distinct samples, not one repeated


def test_training_with_workers_writes_a_head(tiny_backend, tiny_pairs, head_config, tmp_path):
    out = train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1, workers=2, buffer_init=2),
                     **QUIET)
    _, meta = load_head(out)
    assert meta["training"]["steps"] == 1 and meta["training"]["device"] == "cpu"


def test_bad_device_and_workers_without_fork_are_clear_errors(tiny_backend, tiny_pairs, head_config, tmp_path,
                                                              monkeypatch):
    import multiprocessing

    with pytest.raises(ValueError, match="expected cpu, cuda"):
        check_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ValueError, match="fork"):
        train_head(tiny_backend, tiny_pairs, head_config(tmp_path / "h.safetensors", 1, workers=2), **QUIET)


# ---- the CLI: every bad value is a one-line error naming its flag, before anything is loaded


def _cli(tmp_path, capsys, *extra):
    from diffumatting.cli import main

    rc = main(["train-head", "--taesd", str(tmp_path / "no-taesd-here"), "--out", str(tmp_path / "h.safetensors"),
               "--no-progress", *extra])
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("flag,value,says", [
    ("--ckpt-every", "0", ">= 1"), ("--refresh-every", "0", ">= 1"), ("--batch", "0", ">= 1"),
    ("--threads", "-1", "0 (torch's default) or more"), ("--crop", "100000", "32..1024"),
    ("--lr", "1e30", "<= 1.0"), ("--lr", "-1", "> 0.0"), ("--lr", "nan", "> 0.0"), ("--steps", "-5", ">= 0"),
    ("--workers", "-1", ">= 0"), ("--device", "gpu", "expected cpu, cuda")])
def test_cli_rejects_bad_values_up_front(tmp_path, capsys, flag, value, says):
    """#19 H1-H6, H12 (and --lr -1/nan, --workers, --device): exit 2, one line naming the flag, nothing loaded (the
    --taesd folder does not exist, so reaching the loader would give another message)."""
    rc, err = _cli(tmp_path, capsys, flag, value)
    assert rc == 2 and err.startswith(f"error: {flag}") and says in err and err.count("\n") == 1, err


def test_cli_rejects_bad_outputs_loss_weights_and_init(tmp_path, capsys):
    from diffumatting.cli import CLIError
    from diffumatting.cli.commands.train_head import _loss_weights

    assert _loss_weights("l2=16, grad=0") == {"l2": 16.0, "grad": 0.0} and _loss_weights("") == {}
    for bad in ("l2", "sharp=1", "l2=-1", "l2=x", "l2=nan"):
        with pytest.raises(CLIError, match="--loss-weights"):
            _loss_weights(bad)
    rc, err = _cli(tmp_path, capsys, "--init", str(tmp_path / "nope.safetensors"))
    assert rc == 2 and "--init" in err and "does not exist" in err
    (tmp_path / "x.safetensors").mkdir()
    from diffumatting.cli import main

    rc = main(["train-head", "--taesd", str(tmp_path), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out") and "is a folder" in err  # #19 H7
    (tmp_path / "file").write_text("x")
    rc = main(["train-head", "--taesd", str(tmp_path), "--out", str(tmp_path / "file" / "h.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out") and "not a folder" in err
