"""The writer side of the factory: a sample prepared elsewhere (a worker) and committed by the one writer is the same
sample, byte for byte, as one written directly; a capture stands in for the folder's writer and writes nothing;
failed samples are recorded in failed.jsonl, skipped on resume, and can be made again."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffumatting.dataset import (FAILED, FOLDERS, MattingDatasetWriter, QualityThresholds, SampleCapture,
                                  capture_samples, open_writer, prepare_sample)

GREEN = torch.tensor([0.0, 1.0, 0.0])


def _sample(colour=(0.8, 0.3, 0.2), box=(8, 24, 8, 24), h=32, w=32):
    alpha = torch.zeros(1, h, w)
    y0, y1, x0, x1 = box
    alpha[:, y0:y1, x0:x1] = 1.0
    alpha[:, y0, x0:x1] = 0.5
    fg = torch.tensor(colour).reshape(3, 1, 1).expand(3, h, w).clone()
    return alpha * fg + (1 - alpha) * GREEN.reshape(3, 1, 1), fg, alpha


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name not in (".lock", "stats.json")}


def test_prepared_and_committed_equals_written_directly(tmp_path):
    image, fg, a = _sample()
    meta = {"prompt": "a red box", "seed": 3, "model": "m"}
    with MattingDatasetWriter(tmp_path / "direct", alpha_bits=16, trimap_radius=3) as w:
        direct = w.write("gen_000000", image, fg, a, GREEN, caption="a red box", meta=meta)
    prepared = prepare_sample("gen_000000", image, fg, a, GREEN, "a red box", meta, alpha_bits=16, trimap_radius=3)
    # it travels between processes (Ray pickles it)
    prepared = pickle.loads(pickle.dumps(prepared))
    assert set(prepared.files) == {f"{k}/gen_000000.{'txt' if k == 'caption' else 'png'}" for k in FOLDERS}
    with MattingDatasetWriter(tmp_path / "committed") as w:
        res = w.commit_prepared(prepared)
        assert res == direct
        assert "gen_000000" in w.committed
    assert _files(tmp_path / "committed") == _files(tmp_path / "direct")
    assert prepared.thresholds == {"max_key_residue": 0.01, "key_similarity": 0.5, "max_border_alpha": 0.02,
                                   "border": 2, "min_coverage": 0.01, "max_coverage": 0.9}


def test_prepared_rejected_sample_goes_to_rejected_jsonl_only(tmp_path):
    image, fg, a = _sample(box=(0, 32, 0, 32))  # fills the frame: rejected by the gate
    prepared = prepare_sample("gen_000001", image, fg, a, GREEN, "full")
    assert not prepared.accepted and prepared.files == {} and "full" in prepared.reasons
    with MattingDatasetWriter(tmp_path / "ds") as w:
        assert not w.commit_prepared(prepared).accepted
        assert "gen_000001" in w.rejected
        with pytest.raises(ValueError, match="already exists"):
            w.commit_prepared(prepared)
    for folder in FOLDERS:
        assert not any((tmp_path / "ds" / folder).iterdir())
    rows = (tmp_path / "ds" / "rejected.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["name"] == "gen_000001"


def test_a_tampered_file_path_is_refused_and_nothing_is_written(tmp_path):
    image, fg, a = _sample()
    prepared = prepare_sample("gen_000002", image, fg, a, GREEN)
    prepared.files["../outside.png"] = prepared.files.pop("image/gen_000002.png")
    with MattingDatasetWriter(tmp_path / "ds") as w:
        with pytest.raises(ValueError, match=r"outside\.png.*not in one of the data set's folders"):
            w.commit_prepared(prepared)
        assert not w.names
    assert not (tmp_path / "outside.png").exists() and not (tmp_path / "ds" / "metadata.jsonl").exists()


def test_capture_stands_in_for_the_writer_and_writes_nothing(tmp_path):
    root = tmp_path / "ds"
    image, fg, a = _sample()
    with MattingDatasetWriter(root) as real:  # the factory holds the folder's writer in this same process
        with capture_samples(root) as capture:
            got = open_writer(root, alpha_bits=16)
            assert got is capture and isinstance(got, SampleCapture)
            res = got.write("gen_000000", image, fg, a, GREEN, caption="x", thresholds=QualityThresholds())
            assert res.accepted and "gen_000000" in got and got.next_index("gen") == 1
            assert got.write_stats()["counts"] == {"accepted": 1, "rejected": 0}
            got.close()
            with pytest.raises(ValueError, match="already being captured"):
                with capture_samples(root):
                    pass
        assert open_writer(root) is real  # the capture is gone: the shared writer again
        real.close()  # (the extra reference open_writer took)
        assert not real.names and _files(root) == {}  # nothing reached the folder
        real.commit_prepared(capture.samples[0])  # ... until the one writer commits it
        assert sorted(_files(root)) == sorted([*capture.samples[0].files, "metadata.jsonl"])


def test_capture_needs_no_folder_at_all(tmp_path):
    """On a worker the data set's folder does not exist: the capture never creates it."""
    root = tmp_path / "never" / "made"
    with capture_samples(root) as capture:
        open_writer(root).write("s", *_sample(), GREEN)
    assert len(capture.samples) == 1 and not (tmp_path / "never").exists()


def test_failed_samples_are_recorded_skipped_on_resume_and_can_be_retried(tmp_path):
    root = tmp_path / "ds"
    with MattingDatasetWriter(root) as w:
        row = w.record_failed("gen_000004", "worker died: out of memory", meta={"index": 4, "prompt": "a", "seed": 4,
                                                                               "attempts": 3})
        assert row["status"] == "failed" and "gen_000004" in w and "gen_000004" in w.names
        assert w.counts["failed"] == 1
        with pytest.raises(ValueError, match="already exists"):
            w.record_failed("gen_000004", "again")
        with pytest.raises(ValueError, match="name"):
            w.record_failed("../x", "bad name")
        assert w.next_index("gen") == 5
    rows = [json.loads(line) for line in (root / FAILED).read_text().splitlines()]
    assert rows == [{"name": "gen_000004", "status": "failed", "reason": "worker died: out of memory", "index": 4,
                     "prompt": "a", "seed": 4, "attempts": 3}]
    with MattingDatasetWriter(root) as w:  # a resumed run knows it
        assert "gen_000004" in w and w.failed["gen_000004"]["attempts"] == 3
        assert w.forget_failed() == ["gen_000004"]
        assert "gen_000004" not in w and "failed" not in w.counts
    assert not (root / FAILED).exists()
    with MattingDatasetWriter(root) as w:
        assert not w.failed


def test_a_bad_failed_row_is_named_and_a_torn_one_repaired(tmp_path):
    root = tmp_path / "ds"
    with MattingDatasetWriter(root) as w:
        w.record_failed("a", "x")
        w.record_failed("b", "y")
    path = root / FAILED
    good = path.read_bytes()
    path.write_bytes(good + b'{"name": "c", "rea')  # a killed append
    with MattingDatasetWriter(root) as w:
        assert sorted(w.failed) == ["a", "b"]
    assert path.read_bytes() == good
    path.write_bytes(b"not json\n" + good)
    with pytest.raises(ValueError, match=r"failed\.jsonl: line 1 "):
        MattingDatasetWriter(root)


def test_older_data_sets_open_unchanged(tmp_path):
    """A folder written before failed.jsonl existed reads the same and gains no file by being opened."""
    root = tmp_path / "ds"
    with MattingDatasetWriter(root) as w:
        w.write("s_000000", *_sample(), GREEN)
    before = _files(root)
    with MattingDatasetWriter(root) as w:
        assert w.counts == {"accepted": 1, "rejected": 0} and not w.failed
    assert _files(root) == before


def test_importing_the_factory_and_generate_does_not_import_ray():
    code = ("import sys, diffumatting.factory, diffumatting.factory.comfy_worker, diffumatting.cli.commands.generate;"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
