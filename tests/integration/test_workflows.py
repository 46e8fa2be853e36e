"""Example workflows: UI files are structurally valid against the real node definitions, their API twins are what
the UI graph exports, ComfyUI lists them as templates, and every API workflow runs in-process on the tiny models."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WF_DIR = REPO / "workflows"
API_DIR = WF_DIR / "api"
EXPECTED = {
    "01_text_to_transparent_sd15", "02_text_to_transparent_matting_head", "03_text_to_transparent_lora",
    "04_text_to_transparent_controlnet", "05_text_to_transparent_sdxl", "06_key_greenscreen_image",
    "07_composite_onto_background", "08_video_composite", "09_data_factory", "10_transparent_img2img_lora",
    "11_transparent_inpaint", "12_transparent_upscale_4x",
}
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_NAMES = sorted(p.stem for p in WF_DIR.glob("*.json"))
API_NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))


def test_all_workflows_present():
    assert set(UI_NAMES) == EXPECTED
    assert set(API_NAMES) == EXPECTED


def _inputs(cls) -> list[tuple[str, str, dict]]:
    spec = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, value in (spec.get(section) or {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 and isinstance(value[1], dict) else {})
            if isinstance(kind, list):
                kind = "COMBO"
            out.append((name, kind, options))
    return out


def _is_widget(kind, options):
    return kind in WIDGET_TYPES and not options.get("forceInput")


def _n_extra(name, kind, options):
    """Values the frontend stores after a widget: the seed's control_after_generate, an upload button."""
    n = 0
    if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
        n += 1
    if options.get("image_upload") or options.get("video_upload"):
        n += 1
    return n


def _types_match(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def ui_to_api(ui: dict, node_classes) -> dict:
    """What the frontend's graph-to-prompt step produces from this UI graph (links and widget values by name)."""
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        values = list(node.get("widgets_values") or [])
        by_name = {i["name"]: i for i in node.get("inputs", [])}
        inputs = {}
        for name, kind, options in _inputs(node_classes[node["type"]]):
            slot = by_name.get(name)
            if _is_widget(kind, options):
                value = values.pop(0)
                for _ in range(_n_extra(name, kind, options)):
                    values.pop(0)
                if slot is not None and slot.get("link") is not None:
                    link = links[slot["link"]]
                    inputs[name] = [str(link[1]), link[2]]
                else:
                    inputs[name] = value
            elif slot is not None and slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[name] = [str(link[1]), link[2]]
        assert not values, f"node {node['id']} ({node['type']}): {len(values)} widget values left over"
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


@pytest.mark.parametrize("name", UI_NAMES)
def test_ui_workflow_nodes_and_links(comfy, name):
    ui = json.loads((WF_DIR / f"{name}.json").read_text())
    assert ui.get("version") == 0.4 and isinstance(ui["nodes"], list) and isinstance(ui["links"], list)
    classes = comfy.node_classes
    nodes = {n["id"]: n for n in ui["nodes"]}
    problems = []
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in FRONTEND_ONLY:
            continue
        if kind not in classes:
            problems.append(f"node {node['id']}: type {kind} does not exist in ComfyUI + this pack")
            continue
        spec = _inputs(classes[kind])
        names = {n for n, _, _ in spec}
        n_widgets = sum(1 + _n_extra(n, k, o) for n, k, o in spec if _is_widget(k, o))
        if len(node.get("widgets_values") or []) != n_widgets:
            problems.append(f"node {node['id']} {kind}: {len(node.get('widgets_values') or [])} widget values, "
                            f"expected {n_widgets}")
        for slot in node.get("inputs", []):
            if slot["name"] not in names:
                problems.append(f"node {node['id']} {kind}: no input named {slot['name']!r}")
        for name_, kind_, options in spec:
            if not _is_widget(kind_, options) and name_ in classes[kind].INPUT_TYPES().get("required", {}):
                slot = next((s for s in node.get("inputs", []) if s["name"] == name_), None)
                if slot is None or slot.get("link") is None:
                    problems.append(f"node {node['id']} {kind}: required input {name_!r} is not connected")
    for link_id, src, sslot, dst, dslot, ltype in ui["links"]:
        s, d = nodes[src], nodes[dst]
        out_type = classes[s["type"]].RETURN_TYPES[sslot]
        in_slot = d["inputs"][dslot]
        in_type = dict((n, k) for n, k, _ in _inputs(classes[d["type"]]))[in_slot["name"]]
        if not (_types_match(out_type, ltype) and _types_match(ltype, in_type)):
            problems.append(f"link {link_id}: {s['type']}[{sslot}] {out_type} -> {d['type']}.{in_slot['name']} "
                            f"{in_type} (link says {ltype})")
        if in_slot.get("link") != link_id or link_id not in s["outputs"][sslot]["links"]:
            problems.append(f"link {link_id}: not referenced by both ends")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", UI_NAMES)
def test_api_twin_is_the_ui_graph(comfy, name):
    ui = json.loads((WF_DIR / f"{name}.json").read_text())
    api = json.loads((API_DIR / f"{name}.json").read_text())
    stripped = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert ui_to_api(ui, comfy.node_classes) == stripped


def test_comfyui_lists_the_templates(comfy):
    """ComfyUI's own /workflow_templates route lists every UI workflow under the pack's folder name."""
    from aiohttp import web

    from app.custom_node_manager import CustomNodeManager

    paths = comfy.folder_paths.folder_names_and_paths["custom_nodes"][0]
    parent = str(REPO.parent)
    added = parent not in paths
    if added:
        paths.append(parent)
    try:
        routes = web.RouteTableDef()
        CustomNodeManager().add_routes(routes, web.Application(), [(REPO.name, str(REPO))])
        handler = next(r.handler for r in routes if getattr(r, "path", None) == "/workflow_templates")
        response = asyncio.run(handler(None))
    finally:
        if added:
            paths.remove(parent)
    listed = json.loads(response.body)
    assert sorted(listed.get(REPO.name, [])) == UI_NAMES


# ------------------------------------------------------------------------------------------------------------------
# Running the API twins on the tiny models


def _template_inputs() -> set[str]:
    named = set()
    for path in API_DIR.glob("*.json"):
        for node in json.loads(path.read_text()).values():
            if node["class_type"] == "LoadImage":
                named.add(node["inputs"]["image"])
            elif node["class_type"] == "LoadVideo":
                named.add(node["inputs"]["file"])
    return named


def test_a_ui_start_puts_the_templates_inputs_into_a_fresh_input_folder(comfy, tmp_path, monkeypatch):
    """Issue #19: when ComfyUI starts with its UI (a PromptServer exists), the pack's entry point copies every file
    the templates' LoadImage / LoadVideo nodes name into an empty input folder, where ComfyUI's own checks find
    them; a headless start (generate, train) writes nothing there."""
    import server

    fp = comfy.folder_paths
    saved = fp.get_input_directory()
    fresh = tmp_path / "fresh_input"
    named = _template_inputs()
    assert named and named <= set(comfy.pack.EXAMPLE_INPUTS), sorted(named - set(comfy.pack.EXAMPLE_INPUTS))
    try:
        fp.set_input_directory(str(fresh))
        monkeypatch.setattr(server.PromptServer, "instance", None, raising=False)
        asyncio.run(comfy.pack.comfy_entrypoint())
        assert not fresh.exists() or not any(fresh.iterdir()), "a headless start wrote into the input folder"
        monkeypatch.setattr(server.PromptServer, "instance", object(), raising=False)
        asyncio.run(comfy.pack.comfy_entrypoint())
        for name in named:
            assert (fresh / name).is_file(), f"{name} is not in the input folder {fresh}"
            assert fp.exists_annotated_filepath(name)
        listed = fp.filter_files_content_types(os.listdir(fresh), ["image", "video"])
        assert set(comfy.pack.EXAMPLE_INPUTS) <= set(listed)  # what LoadImage / LoadVideo offer
    finally:
        fp.set_input_directory(saved)


def _write_lora(ns, name: str, tiny) -> None:
    """A real (small, random) LoRA for the tiny SD1.5 UNet's cross-attention query projections."""
    import importlib

    from safetensors.torch import save_file

    comfy_lora = importlib.import_module("comfy.lora")
    path = Path(ns.folder_paths.get_folder_paths("loras")[0]) / name
    if path.exists():
        return
    key_map = comfy_lora.model_lora_keys_unet(tiny.model.model, {})
    sd = tiny.model.model.state_dict()
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for lora_key, weight_key in list(key_map.items()):
        if not lora_key.startswith("lora_unet_") or not weight_key.endswith("attn2.to_q.weight"):
            continue
        out_f, in_f = sd[weight_key].shape
        tensors[f"{lora_key}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.01
        tensors[f"{lora_key}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.01
        tensors[f"{lora_key}.alpha"] = torch.tensor(4.0)
    assert tensors, "no LoRA keys found for the tiny UNet"
    save_file(tensors, str(path))


def _write_tiny_head(ns, tiny) -> str:
    """An untrained matting head for the tiny SD1.5 VAE's decoder, in models/diffumatting (plumbing only)."""
    name = "head_workflow_tiny_sd15.safetensors"
    path = ns.models_dir / "diffumatting" / name
    if not path.exists():
        import importlib

        taps, network, weights = (importlib.import_module(f"{ns.pack.__name__}.matting_head.{m}")
                                  for m in ("taps", "network", "weights"))
        spec = taps.tap_spec(tiny.vae.first_stage_model)
        torch.manual_seed(0)
        head = network.MattingHead(spec.channels)
        weights.save_head(path, head, {**spec.info(), "name": "workflow-test"}, {"steps": 0})
    return name


def _to_tiny(prompt: dict) -> dict:
    """Swap checkpoint / ControlNet loaders for DMTestTinyModels and shrink sizes and steps."""
    out = json.loads(json.dumps(prompt))
    redirect = {}
    for nid, node in list(out.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "CheckpointLoaderSimple":
            family = "sdxl" if "xl" in inputs["ckpt_name"].lower() else "sd15"
            out[nid] = {"class_type": "DMTestTinyModels", "inputs": {"family": family}}
            tiny_id = nid
        elif kind == "ControlNetLoader":
            redirect[nid] = True
    for nid in redirect:
        del out[nid]
    for node in out.values():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, list) and value[0] in redirect:
                inputs[key] = [tiny_id, 3]
        for key in ("width", "height"):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = 64
        if "steps" in inputs:
            inputs["steps"] = 2
    return out


def _outputs(result, node_id):
    return result["_history"]["outputs"].get(node_id, {})


@pytest.mark.parametrize("name", API_NAMES)
def test_api_workflow_runs_on_tiny_models(comfy, run_prompt, tiny_sd15, tiny_upscale_model, name):
    prompt = json.loads((API_DIR / f"{name}.json").read_text())
    kinds = {node["class_type"] for node in prompt.values()}
    comfy.pack.install_example_inputs(comfy.folder_paths.get_input_directory())  # what a UI start does
    for node in prompt.values():
        if node["class_type"] == "LoraLoader":
            _write_lora(comfy, node["inputs"]["lora_name"], tiny_sd15)
        if node["class_type"] == "UpscaleModelLoader":
            assert node["inputs"]["model_name"] == tiny_upscale_model  # the shipped name, a tiny random model here
        if node["class_type"] == "DiffuMattingLoader":
            # the shipped name stands for a head trained on the SD VAE; the tiny VAE needs its own (untrained) one
            node["inputs"]["head_name"] = _write_tiny_head(comfy, tiny_sd15)
    tiny = _to_tiny(prompt)
    result = run_prompt(tiny, extra_pnginfo={"workflow": json.loads((WF_DIR / f"{name}.json").read_text())})
    out_dir = Path(comfy.folder_paths.get_output_directory())
    for nid, node in tiny.items():
        kind = node["class_type"]
        if kind == "DiffuMattingSaveRGBA":
            saved = _outputs(result, nid)["images"]
            assert saved, f"{name}: SaveRGBA saved nothing"
            path = out_dir / saved[0]["subfolder"] / saved[0]["filename"]
            assert path.is_file()
            if path.suffix == ".png":
                from diffumatting.common.images import load_image, read_png_text

                assert load_image(path).source_mode == "rgba"
                assert json.loads(read_png_text(path)["workflow"])["version"] == 0.4
        elif kind == "DiffuMattingPreviewRGBA":
            assert _outputs(result, nid)["images"][0]["type"] == "temp"
        elif kind == "DiffuMattingSaveMattingDataset":
            root = out_dir / node["inputs"]["folder"]
            rows = (root / "metadata.jsonl").read_text().splitlines() if (root / "metadata.jsonl").exists() else []
            rejected = (root / "rejected.jsonl").read_text().splitlines() if (root / "rejected.jsonl").exists() else []
            assert len(rows) + len(rejected) >= 1, f"{name}: the data-set node recorded no sample"
        elif kind in ("SaveImage", "SaveVideo"):
            assert _outputs(result, nid), f"{name}: {kind} produced nothing"
    assert kinds  # the workflow was not empty


def test_key_output_slots_match_the_nodes(comfy):
    """tests/unit/test_workflow_consistency.py reads the API files without ComfyUI; its key-output slots are these
    nodes' real DIFFUMATTING_KEY_COLOUR outputs, and every key consumer it knows takes a 'key' input."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_dm_wf_consistency", REPO / "tests" / "unit" / "test_workflow_consistency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for kind, slot in module.KEY_OUTPUT_SLOT.items():
        types = comfy.node_classes[kind].RETURN_TYPES
        assert types[slot] == "DIFFUMATTING_KEY_COLOUR", (kind, slot, types)
        assert types.count("DIFFUMATTING_KEY_COLOUR") == 1, kind
    for kind in module.CONSUMERS:
        spec_in = comfy.node_classes[kind].INPUT_TYPES()
        assert spec_in["optional"]["key"][0] == "DIFFUMATTING_KEY_COLOUR", kind
