"""Regression tests for the node cases of the bad-input report (issue #19) in a real ComfyUI: one case per report id
(``report N1`` ... ``report S3``), run through ComfyUI's own validation and PromptExecutor (``run_prompt``).

Each bad input must stop the prompt with a ValueError whose message starts with the input's name; nothing may be
written (no file, no empty folder) and nothing outside the output folder.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
import torch


@pytest.fixture()
def src(comfy):
    return "DMTestBadRGBA"  # the harness's test node (tests/integration/conftest.py)


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


def capture(ref) -> dict:
    return {"cap": {"class_type": "DMTestCapture", "inputs": {"value": ref, "key": "out"}}}


def output_dir(comfy) -> Path:
    return Path(comfy.folder_paths.get_output_directory())


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def value_error(run_prompt, prompt) -> str:
    err = run_prompt(prompt, expect_error=True)["execution_error"]
    assert err["exception_type"].endswith("ValueError"), err
    return err["exception_message"]


def test_greenpost_empty_batch(comfy, run_prompt, src):
    """report N1: GreenPost on an empty batch: a ValueError naming image, not torch.cat's message."""
    prompt = {"s": {"class_type": src, "inputs": {"kind": "empty"}},
              "gp": {"class_type": "DiffuMattingGreenPost", "inputs": defaults(comfy, "DiffuMattingGreenPost",
                                                                               image=["s", 0])}, **capture(["gp", 0])}
    msg = value_error(run_prompt, prompt)
    assert msg.startswith("image:") and "empty" in msg, msg


def test_save_matting_dataset_empty_batch(comfy, run_prompt, src):
    """report N2: SaveMattingDataset on an empty batch: a ValueError naming the input, nothing written."""
    before = snapshot(output_dir(comfy))
    prompt = {"s": {"class_type": src, "inputs": {"kind": "empty"}},
              "ds": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": defaults(
                  comfy, "DiffuMattingSaveMattingDataset", image=["s", 0], fg=["s", 0], alpha=["s", 1],
                  folder="report_n2", name="x")}}
    msg = value_error(run_prompt, prompt)
    assert msg.startswith("image:") and "empty" in msg, msg
    assert snapshot(output_dir(comfy)) == before


@pytest.mark.parametrize("kind, name", [pytest.param("nan_fg", "fg", id="report N3 fg"),
                                        pytest.param("nan_alpha", "alpha", id="report N3 alpha"),
                                        pytest.param("nan_background", "background", id="report N3 background")])
@pytest.mark.parametrize("linear", [False, True])
def test_alpha_composite_nan(comfy, run_prompt, src, kind, name, linear):
    """report N3 (its three cases): one NaN in fg, alpha or background: a ValueError naming it, in both blend modes
    (no NaN passed on)."""
    prompt = {"s": {"class_type": src, "inputs": {"kind": kind}},
              "ac": {"class_type": "DiffuMattingAlphaComposite", "inputs": defaults(
                  comfy, "DiffuMattingAlphaComposite", fg=["s", 0], alpha=["s", 1], background=["s", 2],
                  linear_light=linear)}, **capture(["ac", 0])}
    msg = value_error(run_prompt, prompt)
    assert msg.startswith(f"{name}:") and "NaN" in msg, msg


def test_preview_rgba_nan(comfy, run_prompt, src):
    """report N4: PreviewRGBA with a NaN fg: a ValueError naming fg, no NaN IMAGE."""
    prompt = {"s": {"class_type": src, "inputs": {"kind": "nan_fg"}},
              "pv": {"class_type": "DiffuMattingPreviewRGBA", "inputs": {"fg": ["s", 0], "alpha": ["s", 1],
                                                                         "square": 8}}, **capture(["pv", 0])}
    assert value_error(run_prompt, prompt).startswith("fg:")


def save_prompt(comfy, src, kind, fmt, prefix):
    return {"s": {"class_type": src, "inputs": {"kind": kind}},
            "sv": {"class_type": "DiffuMattingSaveRGBA", "inputs": defaults(
                comfy, "DiffuMattingSaveRGBA", fg=["s", 0], alpha=["s", 1], format=fmt, filename_prefix=prefix)}}


@pytest.mark.parametrize("kind, fmt, name", [
    pytest.param("nan_fg", "png", "fg", id="report N5 fg png"),
    pytest.param("nan_alpha", "png16", "alpha", id="report N5 alpha png16"),
    pytest.param("nan_fg", "webm", "fg", id="report N5 fg webm"),
    pytest.param("empty", "webm", "fg", id="report N6 empty webm"),
    pytest.param("empty", "png_sequence", "fg", id="report N6 empty png_sequence")])
def test_save_rgba_writes_nothing_for_nan_or_empty(comfy, run_prompt, src, kind, fmt, name):
    """report N5 (NaN fg as png, NaN alpha as png16, NaN fg as webm) and report N6 (an empty batch as webm or
    png_sequence): a ValueError naming the input; no file, no 0-byte .webm, no empty folder."""
    before = snapshot(output_dir(comfy))
    msg = value_error(run_prompt, save_prompt(comfy, src, kind, fmt, f"report_{kind}_{fmt}/x"))
    assert msg.startswith(f"{name}:"), msg
    assert snapshot(output_dir(comfy)) == before


@pytest.mark.parametrize("prefix", ["", "   ", "sub/"])
def test_save_rgba_empty_prefix_is_refused(comfy, run_prompt, src, prefix):
    """report minor note (empty filename_prefix): refused with a ValueError naming filename_prefix instead of a
    hidden ._00001_.png."""
    before = snapshot(output_dir(comfy))
    msg = value_error(run_prompt, save_prompt(comfy, src, "fine", "png", prefix))
    assert msg.startswith("filename_prefix:"), msg
    assert snapshot(output_dir(comfy)) == before
    run_prompt(save_prompt(comfy, src, "fine", "png", "report_ok/x"))  # the same graph with a prefix saves
    assert any(p.startswith("report_ok") for p in snapshot(output_dir(comfy)))


# ------------------------------------------------------------------------------------------------------------------
# matting head loader and decode


@pytest.fixture(scope="module")
def head_file(comfy, tiny_sd15):
    from diffumatting.matting_head.network import MattingHead
    from diffumatting.matting_head.taps import tap_spec
    from diffumatting.matting_head.weights import save_head

    spec = tap_spec(tiny_sd15.vae.first_stage_model)
    path = comfy.models_dir / "diffumatting" / "report_head.safetensors"
    save_head(path, MattingHead(spec.channels), {**spec.info(), "name": "report-tiny-sd15"}, {"steps": 0})
    return path


class DMReportLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["empty", "nan", "huge"], {})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, kind):
        z = torch.zeros(0 if kind == "empty" else 1, 4, 8, 8)
        if kind == "nan":
            z[0, 1, 2, 3] = float("nan")
        elif kind == "huge":
            z[0, 0, 0, 0] = 1e30
        return ({"samples": z},)


@pytest.mark.parametrize("kind, words", [pytest.param("empty", "empty", id="report N7"),
                                         pytest.param("nan", "NaN", id="report N8 NaN"),
                                         pytest.param("huge", "1e+30", id="report N8 1e30")])
def test_decode_bad_latent_names_samples(comfy, run_prompt, head_file, kind, words):
    """report N7 (empty latent batch), report N8 (NaN or 1e30 latent): a ValueError naming samples, not image."""
    comfy.nodes.NODE_CLASS_MAPPINGS["DMReportLatent"] = DMReportLatent
    try:
        prompt = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
                  "load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": head_file.name}},
                  "lat": {"class_type": "DMReportLatent", "inputs": {"kind": kind}},
                  "dec": {"class_type": "DiffuMattingMattingHeadDecode", "inputs": defaults(
                      comfy, "DiffuMattingMattingHeadDecode", samples=["lat", 0], vae=["m", 2], head=["load", 0])},
                  **capture(["dec", 1])}
        msg = value_error(run_prompt, prompt)
    finally:
        comfy.nodes.NODE_CLASS_MAPPINGS.pop("DMReportLatent", None)
    assert msg.startswith("samples:") and words in msg, msg


def test_green_control_sampler_subject_word_is_not_the_suffix(comfy, run_prompt):
    """report N9: subject "a green apple" with a suffix lacking "green": a ValueError naming suffix, no sampling."""
    inputs = defaults(comfy, "DiffuMattingGreenControlSampler", model=["m", 0], clip=["m", 1], vae=["m", 2],
                      subject="a green apple", suffix="isolated on a plain studio background", steps=1, width=64,
                      height=64, batch_size=1)
    prompt = {"m": {"class_type": "DMTestTinyModels", "inputs": {"family": "sd15"}},
              "n": {"class_type": "DiffuMattingGreenControlSampler", "inputs": inputs}, **capture(["n", 1])}
    assert value_error(run_prompt, prompt).startswith("suffix:")


def crafted(head_file: Path, name: str, edit) -> str:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(head_file), "pt") as f:
        meta, sd = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta)
    save_file(sd, str(head_file.with_name(name)), metadata=meta)
    return name


def config(**changes):
    def edit(meta):
        meta["config"] = json.dumps({**json.loads(meta.get("config", "{}")), **changes})

    return edit


@pytest.mark.parametrize("name, edit, field", [
    pytest.param("r_taps.safetensors", lambda m: m.update(tap_channels="[16, 16, 16, 16]"), "tap_channels",
                 id="report N10 tap_channels"),
    pytest.param("r_w16.safetensors", config(width_16=200000), "width_16", id="report N10 width_16"),
    pytest.param("r_blocks.safetensors", config(blocks_32="many"), "blocks_32", id="report N10 blocks_32"),
    pytest.param("r_lat.safetensors", lambda m: m.update(latent_channels="abc"), "latent_channels",
                 id="report N10 latent_channels"),
    pytest.param("r_w16b.safetensors", config(width_16=20000), "width_16", id="report S3 width_16 20000")])
def test_loader_crafted_head_files(comfy, run_prompt, head_file, name, edit, field):
    """report N10 (its four crafted files) and report S3 (a config that would allocate ~14 GB): a ValueError naming
    the file and the field, before any network is built (peak memory grows by far less than the network)."""
    crafted(head_file, name, edit)
    prompt = {"load": {"class_type": "DiffuMattingLoader", "inputs": {"head_name": name}}, **capture(["load", 0])}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = value_error(run_prompt, prompt)
    assert name in msg and field in msg, msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 1 << 20  # KiB: under 1 GB


# ------------------------------------------------------------------------------------------------------------------
# symbolic links out of the output folder


@pytest.fixture()
def link_out(comfy, tmp_path):
    target = tmp_path / "outside_target"
    target.mkdir()
    link = output_dir(comfy) / f"linkdir_{tmp_path.name}"
    link.symlink_to(target, target_is_directory=True)
    yield target, link.name
    link.unlink()


def test_save_rgba_does_not_follow_a_link_out(comfy, run_prompt, src, link_out):
    """report S1: SaveRGBA with filename_prefix through a link to a folder outside: refused, nothing written there."""
    target, link = link_out
    msg = value_error(run_prompt, save_prompt(comfy, src, "fine", "png", f"{link}/evil"))
    assert msg.startswith("filename_prefix:") and list(target.iterdir()) == []


def test_save_matting_dataset_does_not_follow_a_link_out(comfy, run_prompt, src, link_out):
    """report S2: SaveMattingDataset with folder through a link to a folder outside: refused, nothing written."""
    target, link = link_out
    prompt = {"s": {"class_type": src, "inputs": {"kind": "fine"}},
              "ds": {"class_type": "DiffuMattingSaveMattingDataset", "inputs": defaults(
                  comfy, "DiffuMattingSaveMattingDataset", image=["s", 0], fg=["s", 0], alpha=["s", 1],
                  folder=f"{link}/ds", name="x", quality_gate=False)}}
    assert value_error(run_prompt, prompt).startswith("folder:") and list(target.iterdir()) == []
