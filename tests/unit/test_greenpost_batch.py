"""GreenPost's batched path (issue 17): a batch keys as its images do one by one, the thread policy leaves the user's
settings as they were, the batch-wide building blocks equal their per-image definitions, chunk sizing from memory."""

from __future__ import annotations

import threading

import pytest
import torch

from diffumatting.common.keycolour import estimate_key_colours, key_channels, key_difference
from diffumatting.greenpost import green_post
from diffumatting.greenpost.band import opencv_paths
from diffumatting.synthetic import synthetic_matte


def frames(n: int, size: int = 96) -> torch.Tensor:
    """[n,3,size,size] distinct procedural objects over a lit, slightly noisy green screen."""
    out = []
    for i in range(n):
        fg, a = synthetic_matte(size, seed=7 + i, family="fine" if i % 2 else "shapes")
        ys = torch.linspace(0, 1, size)[:, None]
        screen = torch.tensor([0.10, 0.70, 0.25])[:, None, None] * (0.85 + 0.15 * ys)
        noise = 0.01 * torch.randn(3, size, size, generator=torch.Generator().manual_seed(i))
        out.append((a * fg + (1 - a) * screen + noise).clamp(0, 1))
    return torch.stack(out)


@pytest.fixture(scope="module")
def batch():
    return frames(5)


@pytest.mark.parametrize("high_quality", [False, True])
def test_a_batch_keys_as_its_images_do_one_by_one(batch, high_quality):
    # one crop of the transition band serves the whole batch; the only difference from one-by-one keying is the
    # fast guided filter's coarse grid, aligned to that crop instead of each image's own (stated tolerance: mean
    # absolute alpha difference below 1e-3, per image)
    together = green_post(batch, high_quality=high_quality)
    for i in range(batch.shape[0]):
        alone = green_post(batch[i : i + 1], key_colour=together.keys[i], high_quality=high_quality)
        assert (together.alpha[i] - alone.alpha[0]).abs().mean() < 1e-3
        assert (together.fg[i] - alone.fg[0]).abs().mean() < 1e-3


def test_threads_are_single_inside_and_restored_after(batch, monkeypatch):
    import cv2

    from diffumatting.greenpost import core

    seen = []
    real = core._green_post

    def spy(img, *args, **kwargs):
        seen.append((torch.get_num_threads(), cv2.getNumThreads(), img.shape[0], threading.current_thread().name))
        return real(img, *args, **kwargs)

    monkeypatch.setattr(core, "_green_post", spy)
    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(3)
    try:
        result = green_post(batch)
        assert torch.get_num_threads() == 2 and cv2.getNumThreads() == 3  # the user's settings outlive the call
        # two allowed threads: the batch of 5 in two parts (2 + 3), each keyed single-threaded in its own thread
        assert sorted(s[2] for s in seen) == [2, 3] and all(s[0] == 1 and s[1] == 1 for s in seen)
        assert all(s[3].startswith("greenpost") for s in seen)
        assert result.alpha.shape[0] == 5 and len(result.keys) == 5
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv)


def test_concurrent_calls_restore_the_settings_once_the_last_leaves():
    import cv2

    from diffumatting.greenpost.threads import keying_threads

    torch.set_num_threads(2)
    before_cv = cv2.getNumThreads()
    entered, release = threading.Event(), threading.Event()

    def other():
        with keying_threads("cpu"):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert entered.wait(10)
    with keying_threads("cpu") as workers:
        assert workers == 2 and torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    assert torch.get_num_threads() == 2  # this thread's setting is back ...
    assert cv2.getNumThreads() == 1  # ... OpenCV's (process-wide) only once the other call has left too
    release.set()
    t.join(10)
    assert torch.get_num_threads() == 2 and cv2.getNumThreads() == before_cv


def test_a_scoped_switch_holds_in_the_worker_threads(batch):
    # opencv_paths(False) inside the caller must reach the threads that key the parts (a context copy per part)
    import cv2

    from diffumatting.greenpost import band

    calls = []
    real = cv2.boxFilter

    def spy(*a, **k):
        calls.append(threading.current_thread().name)
        return real(*a, **k)

    torch.set_num_threads(2)
    cv2.boxFilter = spy
    try:
        with opencv_paths(False):
            green_post(batch)
        assert calls == []
        green_post(batch)
        assert calls and band._USE_OPENCV.get()
    finally:
        cv2.boxFilter = real


def test_batched_key_estimate_equals_the_estimate_of_each_image(batch):
    mixed = batch.clone()
    mixed[1] = mixed[1][[0, 2, 1]]  # a blue screen among green ones
    mixed[3] = 0.5 + 0.0 * mixed[3]  # grey: no screen
    with pytest.warns(Warning):
        together = estimate_key_colours(mixed)
    for i in range(mixed.shape[0]):
        with pytest.warns(Warning) if i == 3 else _no_warning():
            alone = estimate_key_colours(mixed[i : i + 1])[0]
        assert alone == together[i]
    assert [k.found for k in together] == [True, True, True, False, True]


def test_key_difference_with_mixed_key_channels_equals_each_image_alone():
    torch.manual_seed(0)
    image = torch.rand(3, 3, 8, 8)
    key = torch.tensor([[0.1, 0.7, 0.2], [0.1, 0.2, 0.8], [0.8, 0.1, 0.8]])  # green, blue, magenta
    high = key_channels(key)
    together = key_difference(image, high)
    for i in range(3):
        assert torch.equal(together[i : i + 1], key_difference(image[i : i + 1], high[i : i + 1]))


def test_chroma_check_of_a_batch_equals_each_image_alone():
    from diffumatting.greenpost.refine import chroma_subsampled

    torch.manual_seed(1)
    image = torch.rand(3, 3, 400, 420)
    band = torch.zeros(3, 1, 400, 420, dtype=torch.bool)
    band[0, :, 50:300, 60:380] = True
    band[1, :, 200:390, 10:200] = True  # band[2] stays empty: cannot tell -> False
    together = chroma_subsampled(image, band)
    for i in range(3):
        assert bool(together[i]) == bool(chroma_subsampled(image[i : i + 1], band[i : i + 1])[0])
    assert not bool(together[2])


def test_frames_that_fit_follow_the_free_memory(monkeypatch):
    from diffumatting.greenpost import core

    monkeypatch.setattr(core, "available_memory", lambda device: 4 * 10**9)
    monkeypatch.setattr(core, "address_space_left", lambda: None)
    per_frame = core.KEYING_BYTES_PER_PIXEL * 720 * 1280
    assert core.frames_that_fit(720, 1280, "cpu", most=64) == int(2 * 10**9) // per_frame  # half of what is free
    assert core.frames_that_fit(720, 1280, "cpu", most=4) == 4
    assert core.frames_that_fit(8640, 15360, "cpu") == 1  # never 0
    monkeypatch.setattr(core, "address_space_left", lambda: 10**9)  # ulimit -v below the free memory wins
    assert core.frames_that_fit(720, 1280, "cpu") == int(0.5 * 10**9) // per_frame
    monkeypatch.setattr(core, "available_memory", lambda device: None)
    monkeypatch.setattr(core, "address_space_left", lambda: None)
    assert core.frames_that_fit(720, 1280, "cpu", most=16) == 16  # unknown: the cap


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (issue 17: CPU and GPU agree)")
def test_cuda_and_cpu_agree(batch):
    cpu = green_post(batch)
    gpu = green_post(batch.cuda())
    assert gpu.alpha.device.type == "cuda"
    assert (gpu.alpha.cpu() - cpu.alpha).abs().mean() < 1e-3 and (gpu.fg.cpu() - cpu.fg).abs().mean() < 1e-3


class _no_warning:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        return False
