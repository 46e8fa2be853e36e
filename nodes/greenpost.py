"""GreenPost node: key a green-canvas image (optionally with the matting head's alpha) into straight RGBA."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..common.keycolour import AUTO, resolve_key_colours
from ..greenpost.core import frames_that_fit
from ..matting_head.refine import MODES, key_image, resolve_keyer
from .common import (category, check_interrupted, check_key_widget, compute_device, intermediate_device,
                     key_colour_options, key_socket_input, key_socket_output, progress_bar, socket_keys, to_image,
                     to_mask, widget_key)

MOST_FRAMES = 16  # at most this many frames keyed at a time (progress and Cancel between chunks; a GPU batch of 16
# 1-MP frames is issue 17's measure); fewer when free memory says so (greenpost.core.frames_that_fit)


class DiffuMattingGreenPost(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingGreenPost",
            display_name="GreenPost",
            category=category("keying"),
            description="Key an image of an object on a (near-)green canvas into a straight foreground, an alpha and "
            "a mask: robust key colour, colour difference against a spatially varying screen, edge-preserving "
            "refinement, unmixing against the key colour and despill; optionally (keyer 'learned') the bundled "
            "learned keyer refines the alpha. With an alpha from MattingHeadDecode, that alpha is kept and only the canvas is "
            "cleaned, the colour unmixed and despilled.",
            inputs=[
                io.Image.Input("image", tooltip="The image on a green (or blue, magenta, any) canvas; a batch or video "
                               "frames work."),
                io.Mask.Input("alpha", optional=True, tooltip="Optional alpha to keep, 1 = opaque (e.g. "
                              "MattingHeadDecode 'alpha'). Not a ComfyUI mask: LoadImage's mask is 1 = transparent."),
                io.Combo.Input("key_colour", options=key_colour_options(), default=AUTO,
                               tooltip="The canvas colour: 'auto' estimates it from the image; a preset (its hex "
                               "value is shown); or 'custom hex' to use the hex field. A connected 'key' wins."),
                io.String.Input("key_hex", default="#00B140", tooltip="Key colour as #RRGGBB, used when key_colour "
                                "is 'custom hex'."),
                io.Boolean.Input("share_key_across_batch", default=True, tooltip="Estimate one key colour for the "
                                 "whole batch (stable across video frames); off: one per image."),
                io.Float.Input("clip_black", default=0.0, min=0.0, max=0.5, step=0.005, tooltip="Extra black point: "
                               "raise to make faint canvas noise fully transparent (added to the automatic, "
                               "noise-adaptive black point)."),
                io.Float.Input("clip_white", default=1.0, min=0.5, max=1.0, step=0.005, tooltip="White point: lower "
                               "to make a slightly key-tinted subject fully opaque (the noise-adaptive part is "
                               "subtracted from it)."),
                io.Float.Input("despill", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="Despill strength: how "
                               "much key-colour spill is removed from the foreground colour."),
                io.Float.Input("preserve_luminance", default=0.0, min=0.0, max=1.0, step=0.05, tooltip="Fraction of "
                               "the luminance removed by despill that is added back (keeps despilled areas bright)."),
                io.Int.Input("refine_radius", default=4, min=0, max=16, tooltip="Radius (px) of the edge refinement: "
                             "a guided filter with the image's colours as guide fits alpha to the local colour lines "
                             "(hair, soft edges, JPEG/video chroma); 0 = off (raw colour difference)."),
                io.Boolean.Input("high_quality", default=False, tooltip="Also refine at a second, coarser scale "
                                 "and average the two (a little slower; slightly lower error on the keying benchmark, "
                                 "mostly on wide soft edges)."),
                io.Combo.Input("keyer", options=["classical", "learned", "auto"], default="classical", optional=True,
                               tooltip="'classical' (default): GreenPost alone. 'learned' (experimental): GreenPost's "
                               "alpha refined by the bundled learned keyer (weights/diffumatting_keyer.safetensors; "
                               "an error if that file is unusable); 'auto': the same, but classical GreenPost and a "
                               "warning when the file is missing or unreadable. A connected alpha is kept either "
                               "way."),
                key_socket_input("Optional key colour to key against (e.g. GreenControlSampler's 'key': the "
                                 "colour the canvas was painted with); wins over key_colour / key_hex."),
                io.Mask.Input("guide", optional=True, tooltip="Optional previous alpha of the object, 1 = opaque "
                              "(ObjectOnCanvas 'alpha'), any size of the image's aspect ratio: not kept as the "
                              "matte but followed where the image is still the object on its canvas; where the "
                              "image changed (a restyle, an inpaint) GreenPost's own key decides. A smaller guide "
                              "(after an upscale) is upsampled along the new image's edges. Not with 'alpha'."),
            ],
            outputs=[
                io.Image.Output("fg", display_name="fg", tooltip="Straight (not premultiplied) foreground RGB."),
                io.Mask.Output("alpha", display_name="alpha", tooltip="Alpha, 1 = opaque foreground."),
                io.Mask.Output("mask", display_name="mask", tooltip="ComfyUI mask polarity: 1 = transparent "
                               "(= 1 - alpha), for nodes like JoinImageWithAlpha."),
                io.Image.Output("rgba", display_name="rgba", tooltip="4-channel IMAGE: straight RGB + alpha "
                                "(1 = opaque)."),
                io.Mask.Output("spill", display_name="spill", tooltip="Spill map: how much key colour was removed "
                               "from each pixel, 0..1."),
                key_socket_output("The key colour of each image as keyed (estimated, given or connected), for "
                                  "SaveMattingDataset or another keyer."),
            ],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour)

    @classmethod
    def execute(cls, image, key_colour, key_hex, share_key_across_batch, clip_black, clip_white, despill,
                preserve_luminance, refine_radius, high_quality, alpha=None, key=None, keyer="classical",
                guide=None) -> io.NodeOutput:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image: expected an IMAGE [B,H,W,3], got {shape}")
        if image.shape[0] == 0:
            raise ValueError(f"image: the batch is empty (shape {tuple(image.shape)}); connect at least one image")
        x = image.movedim(-1, 1).float()
        if x.shape[1] == 4:
            x = x[:, :3]  # an RGBA IMAGE: key its colour; connect its alpha as 'alpha' to keep it
        grey = x.shape[1] == 1
        if grey:
            x = x.expand(-1, 3, -1, -1)  # no key colour in grey: GreenPost warns and returns it opaque
        a = None
        if alpha is not None:
            a = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]).float()
            if a.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"alpha: mask size {tuple(a.shape[-2:])} (HxW) must match the image size "
                                 f"{tuple(x.shape[-2:])}")
            if a.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"alpha: batch of {a.shape[0]} masks for {x.shape[0]} images")
        g = None
        if guide is not None:
            if a is not None:
                raise ValueError("guide: connect either alpha (kept as the final matte) or guide (a previous alpha "
                                 "that steers the key), not both")
            if not isinstance(guide, torch.Tensor) or guide.ndim not in (2, 3):
                raise ValueError(f"guide: expected a MASK [B,H,W], got {getattr(guide, 'shape', type(guide).__name__)}")
            g = guide.reshape(-1, 1, guide.shape[-2], guide.shape[-1]).float()
            if g.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"guide: batch of {g.shape[0]} masks for {x.shape[0]} images")
        if keyer not in MODES:
            raise ValueError(f"keyer: expected one of {', '.join(MODES)}, got {keyer!r}")
        # a given alpha is kept, a guide steers the classical key: no keyer to run
        model = resolve_keyer(keyer) if a is None and g is None else None
        # the connected key, else the widget's: a KeyColour, or "auto" (estimated per chunk's image)
        keys = socket_keys(key, x.shape[0]) if key is not None else widget_key(key_colour, key_hex)
        # keying runs on ComfyUI's compute device (the GPU when there is one: the whole chunk in one batch there);
        # results go back to the intermediate device, where ComfyUI keeps images
        device = compute_device()  # each chunk goes there on its own (a long 4K batch need not fit at once)
        if grey:
            keys = "chroma_green"  # no key colour in grey: GreenPost returns it opaque whatever the key
        elif keys == AUTO and share_key_across_batch and x.shape[0] > 1:
            shared = resolve_key_colours(AUTO, x, share=True)  # one colour for all frames
            keys = shared if all(k.found for k in shared) else AUTO
        outs = []
        chunk = frames_that_fit(x.shape[-2], x.shape[-1], device, most=MOST_FRAMES)
        chunks = range(0, x.shape[0], chunk)
        bar = progress_bar(len(chunks))

        def tile_done(done, total):  # a large image's tiles: interruptible between them
            check_interrupted()

        for n, i in enumerate(chunks):
            check_interrupted()
            ai = None if a is None else (a if a.shape[0] == 1 else a[i : i + chunk]).to(device)
            gi = None if g is None else (g if g.shape[0] == 1 else g[i : i + chunk]).to(device)
            xi = (x[i : i + chunk, :1] if grey else x[i : i + chunk]).to(device)
            ki = keys[i : i + chunk] if isinstance(keys, list) else keys
            res = key_image(xi, model, alpha=ai, key_colour=ki, high_quality=high_quality, on_tile=tile_done, guide=gi,
                            black=clip_black, white=clip_white, despill=despill, luma_preserve=preserve_luminance,
                            refine_radius=refine_radius)
            outs.append(_to(res, intermediate_device()))
            bar.update_absolute(n + 1)
        fg = torch.cat([r.fg for r in outs])
        al = torch.cat([r.alpha for r in outs])
        spill = torch.cat([r.spill for r in outs])
        used = tuple(k for r in outs for k in r.keys)
        return io.NodeOutput(to_image(fg), to_mask(al), to_mask(1.0 - al), to_image(torch.cat([fg, al], dim=1)),
                             to_mask(spill), used)


def _to(res, device):
    """A GreenPostResult's images moved to ``device`` (ComfyUI hands IMAGE/MASK on the intermediate device)."""
    res.fg, res.alpha, res.spill = res.fg.to(device), res.alpha.to(device), res.spill.to(device)
    return res


NODES = [DiffuMattingGreenPost]
