"""SaveMattingDataset: write (green image, straight fg, alpha, trimap, caption) samples a matting trainer can read."""

from __future__ import annotations

import os

from comfy_api.latest import io, ui

from ..common.keycolour import AUTO, resolve_key_colours
from ..dataset import MAX_TRIMAP_RADIUS, QualityThresholds, check_text, open_writer
from .common import (category, check_key_widget, image_to_bchw, key_colour_options, key_socket_input, key_summary,
                     mask_to_b1hw, socket_keys, widget_key)


def dataset_root(folder: str) -> str:
    """``folder`` inside ComfyUI's output directory (``""`` or ``"."`` = the output directory itself) -> its real
    path; ``ValueError`` if it leaves the output folder, also through a symbolic link."""
    import folder_paths

    output_dir = os.path.realpath(folder_paths.get_output_directory())
    if os.path.isabs(folder or "."):
        raise ValueError(f"folder: {folder!r} is outside ComfyUI's output folder; use a relative folder name")
    root = os.path.realpath(os.path.join(output_dir, os.path.normpath(folder or ".")))
    if os.path.commonpath((output_dir, root)) != output_dir:
        raise ValueError(f"folder: {folder!r} is outside ComfyUI's output folder (a '..' or a link that leads out "
                         "of it); use a folder inside it")
    return root


class DiffuMattingSaveMattingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingSaveMattingDataset",
            display_name="SaveMattingDataset",
            category=category("output"),
            description="Write matting training samples into a folder of the output directory: image/ (the green "
            "picture), fg/ (straight colour), alpha/, trimap/, caption/ and a metadata.jsonl row per sample "
            "(prompt, seed, model, key colour, quality scores). Every sample is committed atomically; a quality "
            "gate rejects (and counts, in rejected.jsonl) samples with key-colour residue, alpha touching the "
            "border, or an almost empty or almost full alpha. Re-running with the same names skips them.",
            inputs=[
                io.Image.Input("image", tooltip="The generated picture on its green (key-colour) canvas."),
                io.Image.Input("fg", tooltip="Straight (not premultiplied) foreground colour, e.g. GreenPost 'fg'."),
                io.Mask.Input("alpha", tooltip="Alpha, 1 = opaque (GreenPost / MattingHeadDecode 'alpha')."),
                io.String.Input("folder", default="diffumatting_dataset",
                                tooltip="Data-set folder inside ComfyUI's output folder (created if missing)."),
                io.String.Input("name", default="",
                                tooltip="Sample name (file stem). Empty: the next free 'sample_NNNNNN'. A batch adds "
                                "'_b<i>'. A name already in the data set is skipped, so re-runs resume."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt (subject); stored as the caption and in metadata.jsonl."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="The seed that made the sample (stored in metadata.jsonl only)."),
                io.String.Input("model", default="", tooltip="The checkpoint name (stored in metadata.jsonl only)."),
                io.Combo.Input("key_colour", options=key_colour_options(custom=False), default=AUTO,
                               tooltip="The canvas colour for the key-residue check and metadata.jsonl: 'auto' "
                               "(estimated from the image) or a preset. A connected 'key' wins."),
                io.Combo.Input("alpha_bits", options=["8", "16"], default="8", tooltip="Bit depth of alpha/*.png."),
                io.Boolean.Input("quality_gate", default=True,
                                 tooltip="Reject bad samples (they are counted in rejected.jsonl, not written)."),
                io.Float.Input("max_key_residue", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="Largest share of the object whose colour may still be the key colour."),
                io.Float.Input("max_border_alpha", default=0.02, min=0.0, max=1.0, step=0.001,
                               tooltip="Largest share of the image border the object may cover (cut-off objects)."),
                io.Float.Input("min_coverage", default=0.01, min=0.0, max=1.0, step=0.001,
                               tooltip="Smallest mean alpha (below: almost empty)."),
                io.Float.Input("max_coverage", default=0.9, min=0.0, max=1.0, step=0.001,
                               tooltip="Largest mean alpha (above: the object fills the frame)."),
                io.Int.Input("trimap_radius", default=10, min=0, max=256,
                             tooltip="Half width in pixels of the unknown band of trimap/*.png."),
                key_socket_input("Optional key colour of each image (GreenPost / MattingHeadDecode 'key': the "
                                 "colour it was keyed against); wins over key_colour."),
            ],
            outputs=[
                io.Int.Output(display_name="accepted", tooltip="Samples of this batch written to the data set."),
                io.Int.Output(display_name="rejected", tooltip="Samples of this batch rejected by the quality gate."),
                io.String.Output(display_name="report", tooltip="One line per sample: name, verdict, scores."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour, custom=False)

    @classmethod
    def execute(cls, image, fg, alpha, folder="diffumatting_dataset", name="", prompt="", seed=0, model="",
                key_colour=AUTO, alpha_bits="8", quality_gate=True, max_key_residue=0.01, max_border_alpha=0.02,
                min_coverage=0.01, max_coverage=0.9, trimap_radius=10, key=None) -> io.NodeOutput:
        img = image_to_bchw(image, "image")[:, :3].cpu()
        colour = image_to_bchw(fg, "fg")[:, :3].cpu()
        a = mask_to_b1hw(alpha, "alpha").cpu()
        for arg, t in (("image", img), ("fg", colour), ("alpha", a)):
            if t.shape[0] == 0 or t.shape[-1] == 0 or t.shape[-2] == 0:
                raise ValueError(f"{arg}: the batch is empty ({tuple(t.shape)}); nothing to write")
        # no broadcasting (hostile X4): a sample is one image with ITS OWN fg and alpha; a batch-1 fg or alpha
        # beside a larger image batch would pair image i with image 0's matte
        for arg, t in (("fg", colour), ("alpha", a)):
            if t.shape[0] != img.shape[0]:
                raise ValueError(f"{arg}: a batch of {t.shape[0]}, but image is a batch of {img.shape[0]}; each "
                                 f"sample needs its own image, fg and alpha, so the batches must match")
        for arg, text in (("prompt", prompt), ("model", model), ("name", name)):
            check_text(text, arg)
        batch, t = img.shape[0], {"image": img, "fg": colour, "alpha": a}
        if not (img.shape[-2:] == colour.shape[-2:] == a.shape[-2:]):
            raise ValueError(f"image {tuple(img.shape[-2:])}, fg {tuple(colour.shape[-2:])} and alpha "
                             f"{tuple(a.shape[-2:])}: height and width must match")
        if min_coverage > max_coverage:
            raise ValueError(f"min_coverage ({min_coverage}) must not exceed max_coverage ({max_coverage})")
        if key is not None:
            keys = socket_keys(key, batch)
        else:
            keys = resolve_key_colours(widget_key(key_colour), t["image"], name="key_colour")
        thresholds = QualityThresholds(max_key_residue=max_key_residue, max_border_alpha=max_border_alpha,
                                       min_coverage=min_coverage, max_coverage=max_coverage).checked()
        settings = dict(alpha_bits=int(alpha_bits), thresholds=thresholds, trimap_radius=int(trimap_radius),
                        gate_enabled=bool(quality_gate))
        # The process's one writer of this folder, locked against other processes for as long as it is open; under
        # the data factory, a capture of the folder instead (the sample is handed back and committed by the factory's
        # writer, so a factory worker never writes the data set).
        writer = open_writer(dataset_root(folder), **settings)
        try:
            base = name.strip()
            first = writer.next_index("sample") if not base else 0
            accepted = rejected = 0
            lines = []
            for i in range(batch):
                if base:
                    sample = base if batch == 1 else f"{base}_b{i}"
                else:
                    sample = f"sample_{first + i:06d}"
                if sample in writer:
                    lines.append(f"{sample}: already in the data set, skipped")
                    continue
                meta = {"prompt": prompt, "seed": int(seed), "model": model, "batch_index": i}
                res = writer.write(sample, t["image"][i], t["fg"][i], t["alpha"][i], keys[i], caption=prompt,
                                   meta=meta, **settings)
                scores = ", ".join(f"{k}={v:.4f}" for k, v in res.scores.items())
                if res.accepted:
                    accepted += 1
                    lines.append(f"{sample}: accepted ({scores})")
                else:
                    rejected += 1
                    lines.append(f"{sample}: rejected for {', '.join(res.reasons)} ({scores})")
            stats = writer.write_stats(thresholds)["counts"]
            root = writer.root
        finally:
            writer.close()
        lines.append(f"key colour: {key_summary(keys)}")
        lines.append(f"data set {root}: {stats['accepted']} accepted, {stats['rejected']} rejected in total")
        report = "\n".join(lines)
        return io.NodeOutput(accepted, rejected, report, ui=ui.PreviewText(report))


NODES = [DiffuMattingSaveMattingDataset]
