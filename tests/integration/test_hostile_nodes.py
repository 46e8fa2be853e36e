"""Regression tests for the node cases of the hostile-input pass (issue #19 part 2, ``/tmp/hostile/findings.md``) in a
real ComfyUI: one case per id (``hostile X1`` ...), run through ComfyUI's validation and PromptExecutor (``run_prompt``),
as in ``test_report_nodes.py``. A bad input stops the prompt with a ValueError whose message starts with the input's
name, and nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def defaults(comfy, class_type: str, **given) -> dict:
    """Every widget input of a node at its default (combos: the default or the first option), then ``given``."""
    out = {}
    spec = comfy.node_classes[class_type].INPUT_TYPES()
    for group in ("required", "optional"):
        for name, value in spec.get(group, {}).items():
            kind, opts = value[0], (value[1] if len(value) > 1 else {})
            if isinstance(kind, list) and kind:
                out[name] = opts.get("default", kind[0])
            elif isinstance(opts, dict) and opts.get("default") is not None:
                out[name] = opts["default"]
    return {**out, **given}


def output_dir(comfy) -> Path:
    return Path(comfy.folder_paths.get_output_directory())


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def value_error(run_prompt, prompt) -> str:
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert err["exception_type"].endswith("ValueError"), err
    return err["exception_message"]


def image(batch: int, node: str = "img") -> dict:
    return {node: {"class_type": "DMTestImage", "inputs": {"width": 48, "height": 48, "batch": batch,
                                                           "kind": "greenscreen"}}}


def save_rgba(comfy, prefix: str, fmt: str = "png") -> dict:
    return {**image(1), "save": {"class_type": "DiffuMattingSaveRGBA", "inputs": defaults(
        comfy, "DiffuMattingSaveRGBA", fg=["img", 0], alpha=["img", 1], filename_prefix=prefix, format=fmt)}}


@pytest.mark.parametrize("fmt", ["png", "webm"])
def test_save_rgba_long_prefix_is_written(comfy, run_prompt, fmt):
    """hostile X1: a 236-character prefix (file name 247 bytes, under 255) is written, png and webm."""
    prefix = ("q" if fmt == "png" else "w") * 236
    run_prompt(save_rgba(comfy, f"hostile_x1/{prefix}", fmt))
    assert [p.name for p in (output_dir(comfy) / "hostile_x1").glob(f"{prefix}_*_.{fmt}")]


def test_save_rgba_too_long_prefix_is_a_filename_prefix_error(comfy, run_prompt):
    """hostile X1: a 300-character prefix: a ValueError naming filename_prefix, no raw OSError, nothing written."""
    before = snapshot(output_dir(comfy))
    msg = value_error(run_prompt, save_rgba(comfy, "hostile_x1b/" + "p" * 300))
    assert msg.startswith("filename_prefix: too long") and "allows at most 255 bytes" in msg, msg
    assert snapshot(output_dir(comfy)) - before <= {"hostile_x1b"}
    assert not list((output_dir(comfy)).rglob("*.partial*"))


def dataset(comfy, folder: str, image_ref, fg_ref, alpha_ref, **given) -> dict:
    return {"ds": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": defaults(
        comfy, "DiffuMattingSaveMattingDataset", image=image_ref, fg=fg_ref, alpha=alpha_ref, folder=folder,
        quality_gate=False, **given)}}


@pytest.mark.parametrize("single", ["fg", "alpha"])
def test_save_matting_dataset_refuses_a_batch_one_fg_or_alpha(comfy, run_prompt, single):
    """hostile X4: image batch 2 with a batch-1 fg (or alpha): refused naming it (it paired image 1 with image 0's
    matte); nothing written."""
    before = snapshot(output_dir(comfy))
    one = ["one", 0] if single == "fg" else ["one", 1]
    prompt = {**image(2), **image(1, "one"),
              **dataset(comfy, f"hostile_x4_{single}", ["img", 0], one if single == "fg" else ["img", 0],
                        one if single == "alpha" else ["img", 1])}
    msg = value_error(run_prompt, prompt)
    assert msg.startswith(f"{single}: a batch of 1, but image is a batch of 2"), msg
    assert snapshot(output_dir(comfy)) == before


def test_save_matting_dataset_refuses_a_lone_surrogate_in_the_prompt(comfy, run_prompt):
    """hostile X9: prompt 'a\\udcffb' (API JSON allows it): a ValueError naming prompt, nothing written."""
    before = snapshot(output_dir(comfy))
    prompt = {**image(1), **dataset(comfy, "hostile_x9", ["img", 0], ["img", 0], ["img", 1], prompt="a\udcffb")}
    msg = value_error(run_prompt, prompt)
    assert msg.startswith("prompt: holds '\\udcff' at position 1"), msg
    assert snapshot(output_dir(comfy)) == before


def test_save_matting_dataset_refuses_a_folder_named_metadata_jsonl(comfy, run_prompt):
    """hostile X10: <folder>/metadata.jsonl is a folder: a ValueError naming it, up front (no sub-folder made)."""
    root = output_dir(comfy) / "hostile_x10"
    (root / "metadata.jsonl").mkdir(parents=True, exist_ok=True)
    prompt = {**image(1), **dataset(comfy, "hostile_x10", ["img", 0], ["img", 0], ["img", 1])}
    msg = value_error(run_prompt, prompt)
    assert "metadata.jsonl: is not a regular file" in msg, msg
    assert sorted(p.name for p in root.iterdir()) == ["metadata.jsonl"]


def test_key_socket_accepts_the_installed_packages_key_colour(comfy):
    """hostile X19: ComfyUI imports the pack under its folder name, so `diffumatting...KeyColour` is another class;
    the key socket converts it (it said "got list"), and the batch-1 wording is "1 key colour"."""
    from diffumatting.common.keycolour import parse_key_colour

    node_module = comfy.node_classes["DiffuMattingSaveMattingDataset"].__module__
    common = sys.modules[node_module.rsplit(".", 1)[0] + ".common"]
    theirs = sys.modules[node_module.rsplit(".", 2)[0] + ".common.keycolour"].KeyColour
    ours = parse_key_colour("chroma_green")
    assert theirs is not type(ours)  # the situation of the finding
    keys = common.socket_keys([ours, ours], 2)
    assert all(type(k) is theirs for k in keys) and keys[0].rgb == ours.rgb and keys[0].preset == ours.preset
    assert type(common.socket_keys(ours, 1)[0]) is theirs
    with pytest.raises(ValueError, match=r"^key: expected 1 key colour for a batch of 1, got 2$"):
        common.socket_keys([ours, ours], 1)
    with pytest.raises(ValueError, match=r"^key: expected a key colour \(DIFFUMATTING_KEY_COLOUR\) or a list of them, "
                                         r"got a list holding a str"):
        common.socket_keys(["green"], 1)
