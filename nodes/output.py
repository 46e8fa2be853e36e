"""SaveRGBA (PNG 8/16 bit with straight alpha, WebM VP9 with alpha) and PreviewRGBA (on a checkerboard)."""

from __future__ import annotations

import json
import os

import torch
from comfy_api.latest import io, ui

from ..compositing import alpha_over, checkerboard
from ..dataset.rgba_io import encode_rgba_png, write_webm_rgba
from ..common.files import atomic_write_bytes, check_name_length
from .common import category, to_image
from .composite import split_fg_alpha

FORMATS = ["png", "png16", "webm", "png_sequence"]


def _metadata(cls) -> dict[str, str]:
    """ComfyUI's PNG metadata: ``prompt`` and each ``extra_pnginfo`` key as JSON; nothing with --disable-metadata."""
    from comfy.cli_args import args

    if args.disable_metadata or cls is None or not cls.hidden:
        return {}
    text = {}
    if cls.hidden.prompt is not None:
        text["prompt"] = json.dumps(cls.hidden.prompt)
    for key, value in (cls.hidden.extra_pnginfo or {}).items():
        text[key] = json.dumps(value)
    return text


def _inside(path: str, root: str) -> bool:
    """Whether ``path``, its symbolic links resolved, lies in the folder ``root`` (links resolved too)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath((real, base)) == base


def _check_inside(path: str, output_dir: str, filename_prefix: str) -> None:
    if not _inside(path, output_dir):
        raise ValueError(f"filename_prefix: {filename_prefix!r} leads outside the output folder {output_dir} (through "
                         f"a symbolic link to {os.path.realpath(path)}); saving there is not allowed")


def _check_length(path: str, filename_prefix: str) -> None:
    """A file name the file system cannot hold -> ``ValueError`` naming filename_prefix (hostile X1: it was a raw
    ``OSError: [Errno 36] File name too long``)."""
    try:
        check_name_length(path)
    except ValueError as exc:
        raise ValueError(f"filename_prefix: too long ({len(os.path.basename(filename_prefix).encode())} bytes of file "
                         f"name): {exc}") from None


def _broadcast(fg: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..compositing import broadcast_batch

    _, t = broadcast_batch({"fg": fg, "alpha": alpha.to(fg.device)})
    return t["fg"], t["alpha"]


class DiffuMattingSaveRGBA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingSaveRGBA",
            display_name="SaveRGBA",
            category=category("output"),
            description="Save objects with real transparency to the output folder: RGBA PNG with straight alpha "
            "(8 or 16 bit, the workflow embedded like SaveImage does), or a whole batch as one WebM (VP9 with "
            "alpha) or as a numbered PNG sequence in its own folder.",
            inputs=[
                io.Image.Input("fg", tooltip="Straight (not premultiplied) colour; an RGBA image also works when "
                               "'alpha' is not connected."),
                io.Mask.Input("alpha", optional=True, tooltip="Alpha, 1 = opaque (GreenPost / MattingHeadDecode "
                              "'alpha'). Not ComfyUI's mask polarity."),
                io.String.Input("filename_prefix", default="DiffuMatting/rgba",
                                tooltip="File name prefix inside the output folder; may hold sub-folders and "
                                "%date%-style variables like SaveImage."),
                io.Combo.Input("format", options=FORMATS, default="png",
                               tooltip="png: 8-bit RGBA PNG per image. png16: 16-bit RGBA PNG per image. webm: the "
                               "batch as one VP9 video with alpha. png_sequence: the batch as numbered 8-bit RGBA "
                               "PNGs in a folder of their own (frames of a video)."),
                io.Float.Input("fps", default=24.0, min=0.01, max=1000.0, step=0.01,
                               tooltip="Frame rate of the WebM (ignored for PNG)."),
                io.Int.Input("crf", default=20, min=0, max=63,
                             tooltip="WebM quality: lower is better and larger (ignored for PNG)."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fg, filename_prefix="DiffuMatting/rgba", format="png", fps=24.0, crf=20, alpha=None) -> io.NodeOutput:
        import folder_paths

        if format not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
        if not isinstance(filename_prefix, str) or not os.path.basename(filename_prefix.strip()).strip(" ."):
            # ComfyUI would name the files "._00001_.png": hidden, and easily mistaken for macOS metadata
            raise ValueError(f"filename_prefix: expected a file name prefix such as 'DiffuMatting/rgba', got "
                             f"{filename_prefix!r} (no file name in it)")
        colour, a = _broadcast(*split_fg_alpha(fg, alpha))  # empty batches and NaN refused before any file exists
        h, w = colour.shape[-2:]
        output_dir = folder_paths.get_output_directory()
        # ComfyUI checks the prefix against the output folder by name only (abspath) and creates missing folders:
        # resolve symbolic links first, so that no folder or file is made outside it (a link inside it to elsewhere)
        if isinstance(filename_prefix, str):
            sub = os.path.dirname(os.path.normpath(filename_prefix))
            _check_inside(os.path.join(output_dir, sub), output_dir, filename_prefix)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, w, h)
        _check_inside(folder, output_dir, filename_prefix)
        text = _metadata(cls)
        if format == "webm":
            file = f"{filename}_{counter:05}_.webm"
            _check_length(os.path.join(folder, file), filename_prefix)
            write_webm_rgba(os.path.join(folder, file), colour, a, fps=fps, crf=crf, metadata=text)
            return io.NodeOutput(ui=ui.PreviewVideo([ui.SavedResult(file, subfolder, io.FolderType.output)]))
        if format == "png_sequence":
            seq = f"{filename}_{counter:05}_"
            _check_length(os.path.join(folder, seq), filename_prefix)
            _check_inside(os.path.join(folder, seq), output_dir, filename_prefix)
            os.makedirs(os.path.join(folder, seq), exist_ok=True)
            subfolder = os.path.join(subfolder, seq)
            names = [os.path.join(seq, f"frame_{i:05}.png") for i in range(colour.shape[0])]
        else:
            names = [f"{filename.replace('%batch_num%', str(i))}_{counter + i:05}_.png" for i in range(colour.shape[0])]
        for name in names:  # every name checked before the first file is written
            _check_length(os.path.join(folder, name), filename_prefix)
        bits = 16 if format == "png16" else 8
        results = []
        for i, name in enumerate(names):
            atomic_write_bytes(os.path.join(folder, name), encode_rgba_png(colour[i], a[i], bits=bits, text=text))
            results.append(ui.SavedResult(os.path.basename(name), subfolder, io.FolderType.output))
        return io.NodeOutput(ui=ui.SavedImages(results))


class DiffuMattingPreviewRGBA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingPreviewRGBA",
            display_name="PreviewRGBA",
            category=category("output"),
            description="Preview a transparent object on a checkerboard (the usual way to show transparency), so "
            "soft edges, holes and green residue are visible at a glance. Also outputs that picture.",
            inputs=[
                io.Image.Input("fg", tooltip="Straight colour (or RGBA when 'alpha' is not connected)."),
                io.Mask.Input("alpha", optional=True, tooltip="Alpha, 1 = opaque."),
                io.Int.Input("square", default=16, min=1, max=256, tooltip="Checkerboard square size in pixels."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The object over the checkerboard.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, fg, square=16, alpha=None) -> io.NodeOutput:
        colour, a = _broadcast(*split_fg_alpha(fg, alpha))
        board = checkerboard(colour.shape[-2], colour.shape[-1], square=square, device=colour.device)
        image = to_image(alpha_over(colour, a, board))
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [DiffuMattingSaveRGBA, DiffuMattingPreviewRGBA]
