"""AlphaComposite, SaveRGBA, PreviewRGBA and SaveMattingDataset inside a real ComfyUI (in-process prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffumatting.common.images import load_image, read_png_text
from diffumatting.compositing import alpha_over
from diffumatting.dataset import read_webm_rgba


def _img(node_id, w=64, h=48, batch=1, kind="greenscreen"):
    return {node_id: {"class_type": "DMTestImage", "inputs": {"width": w, "height": h, "batch": batch, "kind": kind}}}


def _capture(node_id, src, key):
    return {node_id: {"class_type": "DMTestCapture", "inputs": {"value": src, "key": key}}}


COMPOSITE = {"x": 0.5, "y": 0.5, "scale": 1.0, "anchor": "center", "premultiplied": False, "linear_light": False,
             "light_wrap": 0.0, "light_wrap_radius": 8.0, "invert_alpha": False}


def _output_dir(comfy) -> Path:
    return Path(comfy.folder_paths.get_output_directory())


def test_alpha_composite_node_matches_core(comfy, run_prompt):
    prompt = {
        **_img("1"), **_img("2", batch=3, kind="background"),
        "3": {"class_type": "DiffuMattingAlphaComposite",
              "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "background": ["2", 0], "x": 0.5, "y": 0.5, "scale": 1.0,
                         "anchor": "center", "premultiplied": False, "linear_light": False, "light_wrap": 0.0,
                         "light_wrap_radius": 8.0, "invert_alpha": False}},
        **_capture("4", ["3", 0], "image"), **_capture("5", ["3", 1], "alpha"), **_capture("6", ["3", 2], "mask"),
        **_capture("7", ["1", 0], "fg"), **_capture("8", ["1", 1], "fg_alpha"), **_capture("9", ["2", 0], "bg"),
    }
    out = run_prompt(prompt)
    assert out["image"].shape == (3, 48, 64, 3)  # one object broadcast over three frames
    expected = alpha_over(out["fg"].movedim(-1, 1), out["fg_alpha"][:, None], out["bg"].movedim(-1, 1))
    assert torch.allclose(out["image"], expected.movedim(1, -1), atol=1e-5)
    assert torch.allclose(out["alpha"], out["fg_alpha"].expand(3, -1, -1))
    assert torch.allclose(out["mask"], 1 - out["alpha"])


def test_alpha_composite_batch_mismatch_error(comfy, run_prompt):
    prompt = {
        **_img("1", batch=2), **_img("2", batch=3, kind="background"),
        "3": {"class_type": "DiffuMattingAlphaComposite",
              "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "background": ["2", 0], **COMPOSITE}},
        **_capture("4", ["3", 0], "image"),
    }
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert "batch sizes do not match" in err["exception_message"]


def test_save_rgba_png16_with_metadata(comfy, run_prompt):
    prompt = {
        **_img("1", batch=2),
        "2": {"class_type": "DiffuMattingSaveRGBA",
              "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": "t16/obj", "format": "png16",
                         "fps": 24.0, "crf": 20}},
        **_capture("3", ["1", 1], "alpha"),
    }
    out = run_prompt(prompt, extra_pnginfo={"workflow": {"nodes": []}})
    files = sorted((_output_dir(comfy) / "t16").glob("obj_*.png"))
    assert len(files) == 2
    loaded = load_image(files[1])
    assert loaded.bit_depth == 16 and loaded.source_mode == "rgba"
    assert (loaded.alpha[0] - out["alpha"][1]).abs().max() <= 1 / 65535
    text = read_png_text(files[0])
    assert json.loads(text["prompt"])["2"]["class_type"] == "DiffuMattingSaveRGBA"
    assert json.loads(text["workflow"]) == {"nodes": []}
    ui = out["_history"]["outputs"]["2"]["images"]
    assert [r["filename"] for r in ui] == [f.name for f in files]


def test_save_rgba_respects_disable_metadata(comfy, run_prompt, monkeypatch):
    from comfy.cli_args import args

    monkeypatch.setattr(args, "disable_metadata", True)
    prompt = {**_img("1"), "2": {"class_type": "DiffuMattingSaveRGBA",
                                 "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": "nometa/obj",
                                            "format": "png", "fps": 24.0, "crf": 20}}}
    run_prompt(prompt, extra_pnginfo={"workflow": {"nodes": []}})
    (file,) = (_output_dir(comfy) / "nometa").glob("obj_*.png")
    assert read_png_text(file) == {}


def test_save_rgba_webm_and_sequence(comfy, run_prompt):
    prompt = {
        **_img("1", batch=3),
        "2": {"class_type": "DiffuMattingSaveRGBA",
              "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": "vid/clip", "format": "webm",
                         "fps": 12.0, "crf": 10}},
        "3": {"class_type": "DiffuMattingSaveRGBA",
              "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": "seq/clip", "format": "png_sequence",
                         "fps": 12.0, "crf": 10}},
        **_capture("4", ["1", 1], "alpha"),
    }
    out = run_prompt(prompt)
    (webm,) = (_output_dir(comfy) / "vid").glob("clip_*.webm")
    _, alpha = read_webm_rgba(webm)
    assert alpha.shape == (3, 1, 48, 64)
    assert (alpha[:, 0] - out["alpha"]).abs().mean() < 0.02
    frames = sorted((_output_dir(comfy) / "seq").glob("clip_*_/frame_*.png"))
    assert [f.name for f in frames] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert out["_history"]["outputs"]["2"]["animated"] == [True]


def test_preview_rgba_on_checkerboard(comfy, run_prompt):
    prompt = {
        **_img("1"),
        "2": {"class_type": "DiffuMattingPreviewRGBA", "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "square": 8}},
        **_capture("3", ["2", 0], "preview"), **_capture("4", ["1", 1], "alpha"),
    }
    out = run_prompt(prompt)
    preview, alpha = out["preview"], out["alpha"]
    assert preview.shape == (1, 48, 64, 3)
    # a fully transparent corner shows the light checker grey
    assert alpha[0, 0, 0] == 0 and torch.allclose(preview[0, 0, 0], torch.full((3,), 0.8))
    assert out["_history"]["outputs"]["2"]["images"][0]["type"] == "temp"


def test_save_matting_dataset_node(comfy, run_prompt):
    def prompt(name, fg_node, batch=2, seed=42):
        return {
            **_img("1", batch=batch), **_img("9", batch=batch, kind="background"),
            "2": {"class_type": "DiffuMattingSaveMattingDataset",
                  "inputs": {"image": ["1", 0], "fg": [fg_node, 0], "alpha": ["1", 1], "folder": "ds_node",
                             "name": name, "prompt": "a striped disc", "seed": seed, "model": "tiny",
                             "key_colour": "auto", "alpha_bits": "16", "quality_gate": True, "max_key_residue": 0.01,
                             "max_border_alpha": 0.02, "min_coverage": 0.01, "max_coverage": 0.9, "trimap_radius": 4}},
            **_capture("3", ["2", 0], "accepted"), **_capture("4", ["2", 1], "rejected"), **_capture("5", ["2", 2], "report"),
        }

    # fg without any green (the test backdrop) passes the gate
    out = run_prompt(prompt("disc", "9"))
    assert out["accepted"] == 2 and out["rejected"] == 0, out["report"]
    root = _output_dir(comfy) / "ds_node"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["disc_b0", "disc_b1"]
    assert rows[0]["seed"] == 42 and rows[0]["prompt"] == "a striped disc" and rows[0]["model"] == "tiny"
    assert rows[0]["key_colour"] == "#00b040" and rows[0]["key_source"] == "estimated"  # from the canvas
    assert load_image(root / "alpha" / "disc_b0.png").bit_depth == 16
    # same names again (another seed, so ComfyUI's cache does not answer): skipped, nothing duplicated
    out = run_prompt(prompt("disc", "9", seed=43))
    assert out["accepted"] == 0 and "skipped" in out["report"]
    assert len((root / "metadata.jsonl").read_text().splitlines()) == 2
    # the unkeyed picture as "fg" still has canvas green in its soft edge: rejected and counted
    out = run_prompt(prompt("raw", "1", batch=1))
    assert out["accepted"] == 0 and out["rejected"] == 1 and "key_residue" in out["report"]
    assert not (root / "image" / "raw.png").exists()
    assert json.loads((root / "rejected.jsonl").read_text().splitlines()[0])["name"] == "raw"
    assert json.loads((root / "stats.json").read_text())["counts"]["rejected_key_residue"] == 1


def test_save_matting_dataset_records_the_connected_key(comfy, run_prompt):
    """GreenPost's 'key' output into SaveMattingDataset: the row holds the colour it keyed with and how it was
    obtained (a preset here), and the residue check used that colour."""
    prompt = {
        **_img("1"),
        "k": {"class_type": "DiffuMattingGreenPost", "inputs": {
            "image": ["1", 0], "key_colour": "chroma green #00B140", "key_hex": "#00B140",
            "share_key_across_batch": True, "clip_black": 0.0, "clip_white": 1.0, "despill": 1.0,
            "preserve_luminance": 0.0, "refine_radius": 4, "high_quality": False}},
        "2": {"class_type": "DiffuMattingSaveMattingDataset",
              "inputs": {"image": ["1", 0], "fg": ["k", 0], "alpha": ["k", 1], "key": ["k", 5], "folder": "ds_key",
                         "name": "keyed", "prompt": "", "seed": 0, "model": "", "key_colour": "auto",
                         "alpha_bits": "8", "quality_gate": False, "max_key_residue": 0.01,
                         "max_border_alpha": 0.02, "min_coverage": 0.01, "max_coverage": 0.9, "trimap_radius": 4}},
        **_capture("3", ["2", 0], "accepted"),
    }
    assert run_prompt(prompt)["accepted"] == 1
    row = json.loads((_output_dir(comfy) / "ds_key" / "metadata.jsonl").read_text().splitlines()[0])
    assert row["key_colour"] == "#00b140" and row["key_source"] == "preset" and row["key_preset"] == "chroma_green"


def test_save_matting_dataset_refuses_outside_folder(comfy, run_prompt):
    prompt = {
        **_img("1"),
        "2": {"class_type": "DiffuMattingSaveMattingDataset",
              "inputs": {"image": ["1", 0], "fg": ["1", 0], "alpha": ["1", 1], "folder": "../escape", "name": "",
                         "prompt": "", "seed": 0, "model": "", "key_colour": "green", "alpha_bits": "8",
                         "quality_gate": True, "max_key_residue": 0.01, "max_border_alpha": 0.02,
                         "min_coverage": 0.01, "max_coverage": 0.9, "trimap_radius": 4}},
    }
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert "outside ComfyUI's output folder" in err["exception_message"]


def _dataset_inputs(folder, **extra):
    inputs = {"image": ["1", 0], "fg": ["9", 0], "alpha": ["1", 1], "folder": folder, "name": "", "prompt": "p",
              "seed": 0, "model": "", "key_colour": "auto", "alpha_bits": "8", "quality_gate": False,
              "max_key_residue": 0.01, "max_border_alpha": 0.02, "min_coverage": 0.01, "max_coverage": 0.9,
              "trimap_radius": 4}
    inputs.update(extra)
    return inputs


def test_save_matting_dataset_refuses_a_link_out_of_the_output_folder(comfy, run_prompt, tmp_path):
    outside = tmp_path / "outside_target"
    outside.mkdir()
    link = _output_dir(comfy) / "ds_linkdir"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(outside, target_is_directory=True)
    try:
        prompt = {**_img("1"), **_img("9", kind="background"),
                  "2": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": _dataset_inputs("ds_linkdir/ds")}}
        err = run_prompt(prompt, expect_error=True)["execution_error"]
        assert "outside ComfyUI's output folder" in err["exception_message"]
        assert not any(outside.iterdir())  # nothing written through the link
    finally:
        link.unlink()


def test_save_matting_dataset_empty_batch_is_a_clear_error(comfy):
    import torch

    node = comfy.node_classes["DiffuMattingSaveMattingDataset"]
    empty = torch.zeros(0, 16, 16, 3)
    with pytest.raises(ValueError, match="image: the batch is empty"):
        node.execute(image=empty, fg=empty, alpha=torch.zeros(0, 16, 16), folder="ds_empty")
    assert not (_output_dir(comfy) / "ds_empty").exists()


def test_save_matting_dataset_key_input_wins_and_old_widget_values_work(comfy, run_prompt):
    def prompt(folder, name, key_colour="auto", linked=False):
        p = {**_img("1"), **_img("9", kind="background"),
             "2": {"class_type": "DiffuMattingSaveMattingDataset",
                   "inputs": _dataset_inputs(folder, name=name, key_colour=key_colour)},
             **_capture("3", ["2", 2], "report")}
        if linked:
            p["5"] = {"class_type": "DiffuMattingKeyColour",
                      "inputs": {"key_colour": "custom hex", "key_hex": "#0000FF"}}
            p["2"]["inputs"]["key"] = ["5", 0]
        return p

    root = _output_dir(comfy) / "ds_key"
    run_prompt(prompt("ds_key", "linked", key_colour="auto", linked=True))
    run_prompt(prompt("ds_key", "old", key_colour="green"))  # an older workflow's value
    from diffumatting.common.keycolour import PRESET_LABELS

    label = PRESET_LABELS["pure_green"]  # a preset as the combo shows it
    run_prompt(prompt("ds_key", "label", key_colour=label))
    rows = {r["name"]: r for r in map(json.loads, (root / "metadata.jsonl").read_text().splitlines())}
    assert rows["linked"]["key_colour"] == "#0000ff"  # the connected key, not the estimate
    assert rows["old"]["key_colour"] == "#00b140" and rows["old"]["key_preset"] == "chroma_green"
    assert rows["label"]["key_source"] == "preset" and rows["label"]["key_label"] == label
    err = run_prompt(prompt("ds_key", "bad", key_colour="not a colour"), expect_error=True)
    assert "validation_error" in err


# ------------------------------------------------------------------------------------------------------------------
# issue #19 N3-N6, S1: NaN and empty batches are refused before anything is composited or written; no file lands
# outside the output folder through a symbolic link


@pytest.fixture()
def bad_rgba(comfy):
    return "DMTestBadRGBA"  # the harness's test node (tests/integration/conftest.py)


def _all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _error(run_prompt, prompt) -> str:
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert err["exception_type"].endswith("ValueError"), err
    return err["exception_message"]


@pytest.mark.parametrize("kind, name", [("nan_fg", "fg"), ("nan_alpha", "alpha"), ("nan_background", "background"),
                                        ("empty", "fg")])
def test_alpha_composite_refuses_nan_and_empty_batches(run_prompt, bad_rgba, kind, name):
    for linear in (False, True):
        prompt = {"1": {"class_type": bad_rgba, "inputs": {"kind": kind}},
                  "2": {"class_type": "DiffuMattingAlphaComposite",
                        "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "background": ["1", 2],
                                   **{**COMPOSITE, "linear_light": linear}}},
                  **_capture("3", ["2", 0], "image")}
        msg = _error(run_prompt, prompt)
        assert msg.startswith(f"{name}:") and ("NaN" in msg or "empty" in msg), msg
    prompt["1"]["inputs"]["kind"] = "fine"  # the same graph with clean inputs runs
    assert run_prompt(prompt)["image"].isfinite().all()


@pytest.mark.parametrize("kind, name", [("nan_fg", "fg"), ("nan_alpha", "alpha"), ("empty", "fg")])
def test_preview_rgba_refuses_nan_and_empty_batches(run_prompt, bad_rgba, kind, name):
    prompt = {"1": {"class_type": bad_rgba, "inputs": {"kind": kind}},
              "2": {"class_type": "DiffuMattingPreviewRGBA", "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "square": 8}},
              **_capture("3", ["2", 0], "image")}
    assert _error(run_prompt, prompt).startswith(f"{name}:")


@pytest.mark.parametrize("fmt", ["png", "png16", "webm", "png_sequence"])
@pytest.mark.parametrize("kind, name", [("nan_fg", "fg"), ("nan_alpha", "alpha"), ("empty", "fg")])
def test_save_rgba_refuses_nan_and_empty_batches_before_writing(comfy, run_prompt, bad_rgba, fmt, kind, name):
    before = _all_files(_output_dir(comfy))
    prompt = {"1": {"class_type": bad_rgba, "inputs": {"kind": kind}},
              "2": {"class_type": "DiffuMattingSaveRGBA",
                    "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": f"bad_{kind}_{fmt}/x",
                               "format": fmt, "fps": 24.0, "crf": 30}}}
    msg = _error(run_prompt, prompt)
    assert msg.startswith(f"{name}:") and ("NaN" in msg or "empty" in msg), msg
    assert _all_files(_output_dir(comfy)) == before  # no file, no (empty) folder


def test_save_rgba_does_not_follow_a_symlink_out_of_the_output_folder(comfy, run_prompt, tmp_path):
    outside = tmp_path / "outside_target"
    outside.mkdir()
    link = _output_dir(comfy) / "dm_linkdir"
    link.symlink_to(outside, target_is_directory=True)
    try:
        for prefix in ("dm_linkdir/evil", "dm_linkdir/sub/evil"):
            prompt = {**_img("1"), "2": {"class_type": "DiffuMattingSaveRGBA",
                                         "inputs": {"fg": ["1", 0], "alpha": ["1", 1], "filename_prefix": prefix,
                                                    "format": "png", "fps": 24.0, "crf": 20}}}
            msg = _error(run_prompt, prompt)
            assert "filename_prefix" in msg and "outside the output folder" in msg, msg
        assert list(outside.iterdir()) == []  # neither a file nor the sub-folder was made there
        prompt["2"]["inputs"]["filename_prefix"] = "dm_inside/ok"  # a plain sub-folder still works
        run_prompt(prompt)
        assert list((_output_dir(comfy) / "dm_inside").glob("ok_*.png"))
    finally:
        link.unlink()
