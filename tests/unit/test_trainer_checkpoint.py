"""The training checkpoint module (trainer/checkpoint.py): exact round trip, atomic and durable saves, errors."""

from __future__ import annotations

import errno
import os
import signal

import pytest
import torch

from diffumatting.trainer import checkpoint
from diffumatting.trainer.checkpoint import CheckpointError
from diffumatting.trainer.schedule import lr_scheduler


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.01)
    sched = lr_scheduler(opt, steps=10, warmup=3, decay="cosine")
    gen = torch.Generator().manual_seed(7)
    return model, opt, sched, gen


def _step(model, opt, sched, gen):
    x = torch.randn(5, 4, generator=gen)
    noise = torch.randn(5, 2)  # from torch's global RNG: its state must round-trip too
    loss = ((model(x) - noise) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_round_trip_restores_model_optimizer_scheduler_and_rng_exactly(tmp_path):
    model, opt, sched, gen = _setup()
    for _ in range(3):
        _step(model, opt, sched, gen)
    path = checkpoint.save(tmp_path / "c.safetensors",
                           checkpoint.capture(model=model, optimizer=opt, scheduler=sched, generators={"g": gen},
                                              step=3, log=[{"step": 3, "loss": 0.5}], shape=(1, 2)), "test")
    for _ in range(2):  # the uninterrupted run
        _step(model, opt, sched, gen)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    want_lr = opt.param_groups[0]["lr"]

    model2, opt2, sched2, gen2 = _setup(seed=99)  # another initialisation: everything must come from the file
    torch.manual_seed(12345)
    info = checkpoint.restore(checkpoint.load(path, "test"), model=model2, optimizer=opt2, scheduler=sched2,
                              generators={"g": gen2})
    assert info == {"step": 3, "log": [{"step": 3, "loss": 0.5}], "shape": (1, 2)}
    assert sched2.last_epoch == 3 and opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for _ in range(2):
        _step(model2, opt2, sched2, gen2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert opt2.param_groups[0]["lr"] == want_lr


def test_state_tree_keeps_types_that_json_alone_would_lose(tmp_path):
    state = {"ints": {0: torch.ones(2), 5: "x"}, "tuple": (1, 2.5, None), "nested": [{"t": torch.zeros(1, 3)}],
             "flag": True, "inf": float("inf")}
    path = checkpoint.save(tmp_path / "s.safetensors", state, "test")
    back = checkpoint.load(path, "test")
    assert set(back["ints"]) == {0, 5} and torch.equal(back["ints"][0], torch.ones(2)) and back["ints"][5] == "x"
    assert back["tuple"] == (1, 2.5, None) and back["flag"] is True and back["inf"] == float("inf")
    assert torch.equal(back["nested"][0]["t"], torch.zeros(1, 3))
    with pytest.raises(TypeError, match="device"):
        checkpoint.save(tmp_path / "bad.safetensors", {"device": torch.device("cpu")}, "test")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_killed_save_leaves_the_previous_checkpoint_valid_and_its_temp_file_is_cleaned(tmp_path):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"step": 1, "w": torch.full((64,), 1.0)}, "test")
    pid = os.fork()
    if pid == 0:  # the child dies (SIGKILL) while its new checkpoint is half-way: written, not yet renamed
        try:
            os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
            checkpoint.save(path, {"step": 2, "w": torch.full((64,), 2.0)}, "test")
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    state = checkpoint.load(path, "test")
    assert state["step"] == 1 and torch.equal(state["w"], torch.full((64,), 1.0))
    stale = checkpoint.stale_files(path)
    assert len(stale) == 1 and stale[0].name.startswith(".c.safetensors.")
    assert checkpoint.clean_stale(path) == 1 and not checkpoint.stale_files(path)
    checkpoint.save(path, {"step": 3}, "test")
    assert checkpoint.load(path, "test")["step"] == 3 and sorted(os.listdir(tmp_path)) == ["c.safetensors"]


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"step": 1}, "test")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CheckpointError, match="could not write .*c.safetensors: No space left on device") as err:
        checkpoint.save(path, {"step": 2}, "test")
    assert err.value.reason == "write"
    monkeypatch.undo()
    assert checkpoint.load(path, "test")["step"] == 1 and os.listdir(tmp_path) == ["c.safetensors"]


def test_unreadable_foreign_old_and_other_kind_files_are_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    cases = {}
    cases["unreadable"] = tmp_path / "junk.safetensors"
    cases["unreadable"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    good = checkpoint.save(tmp_path / "ok.safetensors", {"w": torch.zeros(100)}, "test")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-50])
    old = tmp_path / "old.safetensors"
    save_file({"head.x": torch.zeros(1)}, str(old), metadata={"step": "3"})
    foreign = tmp_path / "lora.safetensors"
    save_file({"x": torch.zeros(1)}, str(foreign))
    for path, reason, says in ((cases["unreadable"], "unreadable", "not readable"), (cut, "unreadable", "not readable"),
                               (old, "format", "older version"), (foreign, "format", "not a DiffuMatting training"),
                               (good, "kind", "'test' checkpoint, expected 'lora'")):
        with pytest.raises(CheckpointError, match=says) as err:
            checkpoint.load(path, "lora" if path == good else "test")
        assert err.value.reason == reason and str(path) in str(err.value) and "--no-resume" in str(err.value)


def test_check_writable(tmp_path, monkeypatch):
    import shutil
    import tempfile

    checkpoint.check_writable(tmp_path / "new" / "folder", 1, "--out")
    assert (tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="--out: .* is not a folder"):
        checkpoint.check_writable(tmp_path / "f", 0, "--out")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 5 << 20))
    with pytest.raises(ValueError, match="5.0 MiB free, the run needs about 9.5 MiB"):
        checkpoint.check_writable(tmp_path, int(9.5 * 2 ** 20), "--out")

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match="--out: cannot write in .*read-only"):
        checkpoint.check_writable(tmp_path, 0, "--out")
