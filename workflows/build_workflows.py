"""Build the example workflows (UI format for ComfyUI's template browser + API-format twins) from graph specs.

Run with a ComfyUI checkout (the node definitions, widget order and socket types come from ComfyUI itself):
    COMFYUI_PATH=/path/to/ComfyUI python workflows/build_workflows.py
It loads ComfyUI's core nodes and this pack in-process (CPU), reads every node's input/output definitions, and
writes ``workflows/<name>.json`` (UI, LiteGraph 0.4) and ``workflows/api/<name>.json`` (API format).
"""

from __future__ import annotations

import json
import os
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

from diffumatting.common.keypresets import PRESET_LABELS  # noqa: E402  (torch-free)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
HEAD = "diffumatting_head_sd.safetensors"

SUBJECT = "a glass of orange juice with a straw, studio photo"
NEG = "blurry, low quality"
KEY = PRESET_LABELS["chroma_green"]  # the canvas colour GreenControl paints; its 'key' output carries it on
# the files LoadImage / LoadVideo read: the pack copies them into ComfyUI's input folder (EXAMPLE_INPUTS)
GREENSCREEN = "diffumatting_example_greenscreen.png"
BACKGROUND = "diffumatting_example_background.png"
CONTROL = "diffumatting_example_control.png"
BACKGROUND_VIDEO = "diffumatting_example_background.mp4"
OBJECT_RGBA = "diffumatting_example_object_rgba.png"  # a transparent object (RGBA PNG) for the round trips
UPSCALE_MODEL = "4x_upscale_model.safetensors"  # any 4x model for UpscaleModelLoader (ESRGAN, SRVGGNet, ...)
ROUNDTRIP_NOTE = ("\n\nThe round trip: ObjectOnCanvas puts the object on a flat key-colour canvas (auto: the "
                  "colour farthest from the object's, here magenta for a green object); GreenPost keys the result "
                  "against that colour ('key') with the old alpha as 'guide': kept where the image is unchanged, "
                  "GreenPost's own key where it changed.")
INPUTS_NOTE = ("\n\nThe example inputs (diffumatting_example_*) are copied into ComfyUI's input folder when ComfyUI "
               "starts; pick your own files in the Load nodes.")


def _sampler(subject=SUBJECT, size=512, batch=1, seed=1234, steps=25, **kw):
    return {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2), "subject": subject, "negative": NEG,
            "key_colour": KEY, "strength": 0.8, "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "width": size, "height": size, "batch_size": batch, **kw}


def _greenpost(image, alpha=None, key=None):
    inputs = {"image": image}
    if alpha is not None:
        inputs["alpha"] = alpha
    if key is not None:
        inputs["key"] = key
    return inputs


WORKFLOWS = [
    dict(
        name="01_text_to_transparent_sd15",
        note="# Text to transparent object (SD1.5)\nGreenControlSampler paints the subject on a pure green canvas "
             "(training-free, any SD1.5 checkpoint); GreenPost keys it into straight colour + alpha against the very "
             "colour the canvas was painted with (the 'key' link); SaveRGBA writes an RGBA PNG and PreviewRGBA "
             "shows it on a checkerboard. No matting head needed.",
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("sample", "DiffuMattingGreenControlSampler", _sampler()),
            ("decode", "VAEDecode", {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", 0), key=("sample", "key"))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object", "format": "png"}),
        ],
    ),
    dict(
        name="02_text_to_transparent_matting_head",
        note="# Text to transparent object with the matting head (SD1.5)\nMattingHeadDecode decodes the latent and "
             "predicts alpha from the VAE decoder's features in the same pass; GreenPost keeps that alpha, unmixes "
             "and despills. Both key against the colour GreenControlSampler painted (the 'key' links). Put a "
             "matting head trained for your VAE in models/diffumatting.",
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("head", "DiffuMattingLoader", {"head_name": HEAD}),
            ("sample", "DiffuMattingGreenControlSampler", _sampler()),
            ("decode", "DiffuMattingMattingHeadDecode", {"samples": ("sample", 0), "vae": ("ckpt", 2),
                                                          "head": ("head", 0), "key": ("sample", "key")}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", "image"), ("decode", "alpha"), ("decode", "key"))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object_head", "format": "png16"}),
        ],
    ),
    dict(
        name="03_text_to_transparent_lora",
        note="# Text to transparent object with a LoRA\nAny community LoRA loads as usual before GreenControlSampler "
             "(the green-canvas patch stacks with LoRA weight patches). Pick your LoRA file in LoraLoader.",
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("lora", "LoraLoader", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "lora_name": "your_style_lora.safetensors",
                                    "strength_model": 0.8, "strength_clip": 0.8}),
            ("sample", "DiffuMattingGreenControlSampler",
             _sampler(subject="a cute ceramic owl figurine", model=("lora", 0), clip=("lora", 1))),
            ("decode", "VAEDecode", {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", 0), key=("sample", "key"))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object_lora", "format": "png"}),
        ],
    ),
    dict(
        name="04_text_to_transparent_controlnet",
        note="# Text to transparent object with a ControlNet\nGreenControl patches the MODEL and encodes the prompts; "
             "ControlNetApplyAdvanced adds the control (here Canny edges of a reference picture) to the conditioning; "
             "any sampler (KSampler) then paints on the green canvas." + INPUTS_NOTE,
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("green", "DiffuMattingGreenControl", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2),
                                                   "subject": "a vintage teapot", "negative": NEG,
                                                   "key_colour": KEY, "strength": 0.8}),
            ("cnload", "ControlNetLoader", {"control_net_name": "control_v11p_sd15_canny.safetensors"}),
            ("ref", "LoadImage", {"image": CONTROL}),
            ("canny", "Canny", {"image": ("ref", 0), "low_threshold": 0.4, "high_threshold": 0.8}),
            ("apply", "ControlNetApplyAdvanced", {"positive": ("green", 1), "negative": ("green", 2),
                                                  "control_net": ("cnload", 0), "image": ("canny", 0), "vae": ("ckpt", 2),
                                                  "strength": 0.8, "start_percent": 0.0, "end_percent": 0.8}),
            ("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
            ("ksampler", "KSampler", {"model": ("green", 0), "positive": ("apply", 0), "negative": ("apply", 1),
                                      "latent_image": ("latent", 0), "seed": 1234, "steps": 25, "cfg": 7.0,
                                      "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}),
            ("decode", "VAEDecode", {"samples": ("ksampler", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", 0), key=("green", "key"))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object_controlnet", "format": "png"}),
        ],
    ),
    dict(
        name="05_text_to_transparent_sdxl",
        note="# Text to transparent object (SDXL)\nThe same graph as the SD1.5 one with an SDXL checkpoint at "
             "1024 px; GreenControl finds the 'green' token in both SDXL text encoders.",
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL}),
            ("sample", "DiffuMattingGreenControlSampler", _sampler(subject="a bouquet of sunflowers in a glass vase",
                                                                   size=1024)),
            ("decode", "VAEDecode", {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", 0), key=("sample", "key"))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object_sdxl", "format": "png"}),
        ],
    ),
    dict(
        name="06_key_greenscreen_image",
        note="# Key an existing green-screen picture\nLoadImage -> GreenPost (key colour found automatically; blue "
             "and other screens work too) -> RGBA PNG with straight alpha, and a checkerboard preview." + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": GREENSCREEN}),
            ("key", "DiffuMattingGreenPost", _greenpost(("load", 0))),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/keyed", "format": "png16"}),
        ],
    ),
    dict(
        name="07_composite_onto_background",
        note="# Composite onto a background\nKey a green-screen object and place it on a background picture: "
             "position (fractions of the background), scale, anchor; linear-light blending and a touch of light "
             "wrap make it sit in the scene." + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": GREENSCREEN}),
            ("bg", "LoadImage", {"image": BACKGROUND}),
            ("key", "DiffuMattingGreenPost", _greenpost(("load", 0))),
            ("comp", "DiffuMattingAlphaComposite", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                                    "background": ("bg", 0), "x": 0.5, "y": 0.95, "scale": 0.6,
                                                    "anchor": "bottom", "linear_light": True, "light_wrap": 0.3,
                                                    "light_wrap_radius": 8.0}),
            ("save", "SaveImage", {"images": ("comp", 0), "filename_prefix": "DiffuMatting/composite"}),
        ],
    ),
    dict(
        name="08_video_composite",
        note="# Composite onto video frames\nOne keyed object over every frame of a video (a batch of images): "
             "AlphaComposite broadcasts a single object over many frames (or many objects over one background). "
             "The frames go back into a video with CreateVideo + SaveVideo; the object alone is also saved as a "
             "WebM with alpha." + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": GREENSCREEN}),
            ("video", "LoadVideo", {"file": BACKGROUND_VIDEO}),
            ("frames", "GetVideoComponents", {"video": ("video", 0)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("load", 0))),
            ("comp", "DiffuMattingAlphaComposite", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                                    "background": ("frames", 0), "x": 0.3, "y": 0.9, "scale": 0.5,
                                                    "anchor": "bottom", "linear_light": True}),
            ("create", "CreateVideo", {"images": ("comp", 0), "fps": ("frames", 2)}),
            ("savevideo", "SaveVideo", {"video": ("create", 0), "filename_prefix": "DiffuMatting/video_composite"}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/object_alpha", "format": "webm"}),
        ],
    ),
    dict(
        name="10_transparent_img2img_lora",
        note="# Transparent img2img with a LoRA restyle\nLoadImage reads an RGBA PNG (image + mask = 1 - alpha); "
             "ObjectOnCanvas puts it on a key-colour canvas; GreenControl (with the canvas colour connected) keeps "
             "the background that colour while KSampler restyles the object at denoise 0.55 with your LoRA; "
             "GreenPost keys it back and SaveRGBA writes an RGBA PNG." + ROUNDTRIP_NOTE + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": OBJECT_RGBA}),
            ("canvas", "DiffuMattingObjectOnCanvas", {"image": ("load", 0), "mask": ("load", 1)}),
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("lora", "LoraLoader", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "lora_name": "your_style_lora.safetensors",
                                    "strength_model": 0.8, "strength_clip": 0.8}),
            ("green", "DiffuMattingGreenControl", {"model": ("lora", 0), "clip": ("lora", 1), "vae": ("ckpt", 2),
                                                   "subject": "a leaf-shaped glass ornament, watercolour style",
                                                   "negative": NEG, "key_colour": "auto", "strength": 0.8,
                                                   "key": ("canvas", "key")}),
            ("encode", "VAEEncode", {"pixels": ("canvas", "image"), "vae": ("ckpt", 2)}),
            ("ksampler", "KSampler", {"model": ("green", 0), "positive": ("green", 1), "negative": ("green", 2),
                                      "latent_image": ("encode", 0), "seed": 1234, "steps": 25, "cfg": 6.0,
                                      "sampler_name": "euler", "scheduler": "normal", "denoise": 0.55}),
            ("decode", "VAEDecode", {"samples": ("ksampler", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", {"image": ("decode", 0), "key": ("green", "key"),
                                              "guide": ("canvas", "alpha")}),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/restyled", "format": "png"}),
        ],
    ),
    dict(
        name="11_transparent_inpaint",
        note="# Transparent inpaint\nThe object on its key-colour canvas is repainted inside a mask on the object "
             "(here its own alpha: SetLatentNoiseMask; connect your own mask, e.g. painted in LoadImage's mask "
             "editor, to repaint only a part); the canvas outside stays as it was, GreenControl keeps it the key "
             "colour, and GreenPost keys the result with the old alpha as guide." + ROUNDTRIP_NOTE + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": OBJECT_RGBA}),
            ("canvas", "DiffuMattingObjectOnCanvas", {"image": ("load", 0), "mask": ("load", 1)}),
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("green", "DiffuMattingGreenControl", {"model": ("ckpt", 0), "clip": ("ckpt", 1), "vae": ("ckpt", 2),
                                                   "subject": "a leaf made of gold, intricate detail",
                                                   "negative": NEG, "key_colour": "auto", "strength": 0.8,
                                                   "key": ("canvas", "key")}),
            ("encode", "VAEEncode", {"pixels": ("canvas", "image"), "vae": ("ckpt", 2)}),
            ("noisemask", "SetLatentNoiseMask", {"samples": ("encode", 0), "mask": ("canvas", "alpha")}),
            ("ksampler", "KSampler", {"model": ("green", 0), "positive": ("green", 1), "negative": ("green", 2),
                                      "latent_image": ("noisemask", 0), "seed": 1234, "steps": 25, "cfg": 6.0,
                                      "sampler_name": "euler", "scheduler": "normal", "denoise": 0.75}),
            ("decode", "VAEDecode", {"samples": ("ksampler", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", {"image": ("decode", 0), "key": ("green", "key"),
                                              "guide": ("canvas", "alpha")}),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/inpainted", "format": "png"}),
        ],
    ),
    dict(
        name="12_transparent_upscale_4x",
        note="# Transparent 4x upscale\nAny upscale model (models/upscale_models: ESRGAN, SRVGGNet / Real-ESRGAN, "
             "...) upscales the object on its key-colour canvas; GreenPost keys the 4x image with the old, small "
             "alpha as guide, upsampled along the new image's edges, and SaveRGBA writes a 16-bit RGBA PNG. Pick "
             "your model file in UpscaleModelLoader." + ROUNDTRIP_NOTE + INPUTS_NOTE,
        nodes=[
            ("load", "LoadImage", {"image": OBJECT_RGBA}),
            ("canvas", "DiffuMattingObjectOnCanvas", {"image": ("load", 0), "mask": ("load", 1)}),
            ("upmodel", "UpscaleModelLoader", {"model_name": UPSCALE_MODEL}),
            ("upscale", "ImageUpscaleWithModel", {"upscale_model": ("upmodel", 0), "image": ("canvas", "image")}),
            ("key", "DiffuMattingGreenPost", {"image": ("upscale", 0), "key": ("canvas", "key"),
                                              "guide": ("canvas", "alpha")}),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
            ("save", "DiffuMattingSaveRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha"),
                                              "filename_prefix": "DiffuMatting/upscaled", "format": "png16"}),
        ],
    ),
    dict(
        name="09_data_factory",
        note="# Data factory\nGenerate an object on green, key it, and write a matting training sample (image/ fg/ "
             "alpha/ trimap/ caption/ + metadata.jsonl) with a quality gate. Queue it many times with different "
             "seeds, or run it headless in bulk:\n\n    python -m diffumatting generate --comfyui PATH --checkpoint "
             "NAME --prompts prompts.txt --count 1000 --out DIR",
        nodes=[
            ("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SD15}),
            ("seed", "PrimitiveInt", {"value": 1234, "__control": "increment"}),
            ("subject", "PrimitiveStringMultiline", {"value": "a knitted wool hat"}),
            ("sample", "DiffuMattingGreenControlSampler", _sampler(subject=("subject", 0), seed=("seed", 0))),
            ("decode", "VAEDecode", {"samples": ("sample", 0), "vae": ("ckpt", 2)}),
            ("key", "DiffuMattingGreenPost", _greenpost(("decode", 0), key=("sample", "key"))),
            ("dataset", "DiffuMattingSaveMattingDataset", {"image": ("decode", 0), "fg": ("key", "fg"),
                                                           "alpha": ("key", "alpha"), "key": ("key", "key"),
                                                           "folder": "diffumatting_dataset",
                                                           "prompt": ("subject", 0), "seed": ("seed", 0),
                                                           "model": SD15}),
            ("preview", "DiffuMattingPreviewRGBA", {"fg": ("key", "fg"), "alpha": ("key", "alpha")}),
        ],
    ),
]


# ------------------------------------------------------------------------------------------------------------------


def node_info(cls) -> dict:
    """``{"inputs": [(name, type, options, optional)], "outputs": [(name, type)]}`` as ComfyUI serves it."""
    spec = cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, value in (spec.get(section) or {}).items():
            kind = value[0]
            options = value[1] if len(value) > 1 and isinstance(value[1], dict) else {}
            if isinstance(kind, list):
                options = {**options, "options": kind}
                kind = "COMBO"
            inputs.append((name, kind, options, section == "optional"))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    outputs = list(zip(names, cls.RETURN_TYPES))
    return {"inputs": inputs, "outputs": outputs}


def is_widget(kind, options) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def extra_widgets(name, kind, options, control="fixed") -> list:
    """UI-only widget values the frontend stores after an input's value (seed control, upload button)."""
    out = []
    if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
        out.append(control)
    if options.get("image_upload") or options.get("video_upload") or options.get("upload"):
        out.append("image")
    return out


def build(wf: dict, infos: dict) -> tuple[dict, dict]:
    keys = [k for k, _, _ in wf["nodes"]]
    ids = {k: i + 1 for i, k in enumerate(keys)}
    kinds = {k: t for k, t, _ in wf["nodes"]}

    def out_slot(src_key, slot):
        if isinstance(slot, int):
            return slot
        names = [n for n, _ in infos[kinds[src_key]]["outputs"]]
        if slot not in names:
            raise KeyError(f"{wf['name']}: {kinds[src_key]} has no output {slot!r} (has {names})")
        return names.index(slot)

    api, links, ui_nodes = {}, [], []
    depth = {}
    for key, kind, values in wf["nodes"]:
        srcs = [v[0] for k, v in values.items() if isinstance(v, tuple)]
        depth[key] = 1 + max((depth[s] for s in srcs), default=-1)
    column_y: dict[int, float] = {}
    link_id = 0
    out_links: dict[tuple[int, int], list[int]] = {}
    for order, (key, kind, values) in enumerate(wf["nodes"]):
        info = infos[kind]
        values = dict(values)
        control = values.pop("__control", "fixed")
        known = {n for n, _, _, _ in info["inputs"]}
        unknown = set(values) - known
        if unknown:
            raise KeyError(f"{wf['name']}: {kind} has no inputs {sorted(unknown)}")
        api_inputs, ui_inputs, widgets = {}, [], []
        for slot, (name, itype, options, optional) in enumerate(info["inputs"]):
            value = values.get(name)
            widget = is_widget(itype, options)
            if isinstance(value, tuple):
                src, sslot = value[0], out_slot(value[0], value[1])
                link_id += 1
                stype = infos[kinds[src]]["outputs"][sslot][1]
                links.append([link_id, ids[src], sslot, ids[key], len(ui_inputs), stype])
                out_links.setdefault((ids[src], sslot), []).append(link_id)
                api_inputs[name] = [str(ids[src]), sslot]
                entry = {"name": name, "type": itype, "link": link_id}
                if widget:
                    entry["widget"] = {"name": name}
                ui_inputs.append(entry)
                if widget:
                    widgets.append(options.get("default", (options.get("options") or [None])[0]))
                    widgets.extend(extra_widgets(name, itype, options, control))
                continue
            if not widget:
                if not optional:
                    raise KeyError(f"{wf['name']}: {kind}.{name} ({itype}) must be linked")
                ui_inputs.append({"name": name, "type": itype, "shape": 7, "link": None})
                continue
            if value is None:
                if "default" in options:
                    value = options["default"]
                elif options.get("options"):
                    value = options["options"][0]
                else:
                    raise KeyError(f"{wf['name']}: {kind}.{name} needs a value")
            api_inputs[name] = value
            ui_inputs.append({"name": name, "type": itype, "widget": {"name": name}, "link": None})
            widgets.append(value)
            widgets.extend(extra_widgets(name, itype, options, control))
        api[str(ids[key])] = {"class_type": kind, "inputs": api_inputs, "_meta": {"title": key}}
        d = depth[key]
        y = column_y.get(d, 80.0)
        n_rows = len(widgets) + max(len(info["outputs"]), sum(1 for i in ui_inputs if "widget" not in i))
        height = 46 + 24 * n_rows
        column_y[d] = y + height + 60
        ui_nodes.append({
            "id": ids[key], "type": kind, "pos": [420 + 380 * d, y], "size": [340, height], "flags": {},
            "order": order, "mode": 0, "inputs": ui_inputs,
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(info["outputs"])],
            "properties": {"Node name for S&R": kind,
                           "cnr_id": "comfy-core" if not kind.startswith("DiffuMatting") else "diffumatting"},
            "widgets_values": widgets,
        })
    for node in ui_nodes:
        for out in node["outputs"]:
            out["links"] = out_links.get((node["id"], out["slot_index"]), [])
    note_id = len(keys) + 1
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [20, 80], "size": [360, 320], "flags": {},
                     "order": len(keys), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                     "widgets_values": [wf["note"]], "color": "#432", "bgcolor": "#653"})
    ui = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "diffumatting/" + wf["name"])), "revision": 0,
        "last_node_id": note_id, "last_link_id": link_id, "nodes": ui_nodes, "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }
    return ui, api


def main() -> int:
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        print("set COMFYUI_PATH to a ComfyUI checkout", file=sys.stderr)
        return 2
    import tempfile

    from diffumatting.comfy_bootstrap import start_comfyui

    scratch = tempfile.mkdtemp(prefix="dm-wf-")  # output and input folders of its own (the pack copies inputs)
    nodes = start_comfyui(comfyui, cpu=True, output_dir=os.path.join(scratch, "output"),
                          input_dir=os.path.join(scratch, "input")).nodes
    for wf in WORKFLOWS:
        infos = {kind: node_info(nodes.NODE_CLASS_MAPPINGS[kind]) for _, kind, _ in wf["nodes"]}
        ui, api = build(wf, infos)
        with open(os.path.join(HERE, wf["name"] + ".json"), "w", encoding="utf-8") as f:
            json.dump(ui, f, indent=1)
            f.write("\n")
        with open(os.path.join(HERE, "api", wf["name"] + ".json"), "w", encoding="utf-8") as f:
            json.dump(api, f, indent=1)
            f.write("\n")
        print("wrote", wf["name"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
