"""ObjectOnCanvas: put a transparent object on a flat key-colour canvas for any image workflow (the round trip).

    LoadImage (RGBA PNG) -> ObjectOnCanvas -> img2img / inpaint / LoRA restyle / upscale model
    -> GreenPost (key = this node's key, guide = this node's alpha) -> SaveRGBA

The canvas is ``a F + (1 - a) K`` in sRGB (``compositing.alpha_over``), the very mix GreenPost unmixes, so keying an
unchanged canvas with its alpha as guide gives the object back.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..common.keychoice import choose_key_colours
from ..common.keycolour import AUTO
from ..compositing import alpha_over, broadcast_batch
from .common import (category, check_key_widget, key_colour_options, key_socket_input, key_socket_output,
                     key_summary, socket_keys, to_image, to_mask, widget_key)
from .composite import split_fg_alpha

AUTO_FROM = ["key presets", "any hue"]
_EMPTY_MASK_SIDE = 64  # LoadImage's mask for a picture without transparency: 64x64 zeros


class DiffuMattingObjectOnCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingObjectOnCanvas",
            display_name="ObjectOnCanvas",
            category=category("keying"),
            description="Put a transparent object (straight colour + alpha, an RGBA image, or LoadImage's image + "
            "mask) on a flat key-colour canvas, so any image workflow (img2img, inpaint, a LoRA restyle, an upscale "
            "model) can repaint it; then key the result with GreenPost, its 'key' and its 'guide' connected to this "
            "node's 'key' and 'alpha', to get a transparent object back. 'auto' picks the key colour farthest from "
            "the object's own colours (a green frog goes on magenta).",
            inputs=[
                io.Image.Input("image", tooltip="The object's straight (not premultiplied) colour, or an RGBA IMAGE "
                               "whose 4th channel is its alpha (1 = opaque)."),
                io.Mask.Input("alpha", optional=True, tooltip="The object's alpha, 1 = opaque (e.g. GreenPost "
                              "'alpha'). Wins over an RGBA image's own alpha. Connect either alpha or mask."),
                io.Mask.Input("mask", optional=True, tooltip="ComfyUI mask polarity, 1 = transparent: LoadImage's "
                              "MASK of an RGBA PNG (read as alpha = 1 - mask). Connect either alpha or mask."),
                io.Combo.Input("key_colour", options=key_colour_options(), default=AUTO,
                               tooltip="The canvas colour: 'auto' picks the candidate farthest from the object's "
                               "colours, weighted by coverage (green unless the object is green-ish); a preset; or "
                               "'custom hex' for the hex field. A connected 'key' wins."),
                io.String.Input("key_hex", default="#FF00FF", tooltip="Canvas colour as #RRGGBB, used when key_colour "
                                "is 'custom hex'."),
                io.Combo.Input("auto_from", options=AUTO_FROM, default=AUTO_FROM[0], tooltip="What 'auto' picks "
                               "from: the key presets (chroma green, magenta, chroma blue), or saturated colours of "
                               "any hue GreenPost recognises as a screen (green, blue and magenta ranges, 15 degree "
                               "steps)."),
                io.Boolean.Input("share_key_across_batch", default=False, tooltip="'auto' on a batch: one canvas "
                                 "colour for all images (video frames); off: one per image."),
                key_socket_input("Optional canvas colour (e.g. from KeyColour); wins over key_colour."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The object over the flat key-colour canvas, "
                                "for any image workflow."),
                key_socket_output("The canvas colour of each image: connect it to GreenPost 'key' (and "
                                  "GreenControl 'key' to paint on the same colour)."),
                io.Mask.Output("alpha", display_name="alpha", tooltip="The alpha the object was placed with, "
                               "1 = opaque: connect it to GreenPost 'guide' (or, as an inpainting mask, to repaint "
                               "the object)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour)

    @classmethod
    def execute(cls, image, key_colour, key_hex, auto_from, share_key_across_batch, alpha=None, mask=None,
                key=None) -> io.NodeOutput:
        fg, a = object_and_alpha(image, alpha, mask)
        batch, t = broadcast_batch({"image": fg, "alpha": a})
        fg, a = t["image"].clamp(0, 1), t["alpha"].clamp(0, 1)
        if auto_from not in AUTO_FROM:
            raise ValueError(f"auto_from: expected one of {', '.join(AUTO_FROM)}, got {auto_from!r}")
        if key is not None:
            keys = socket_keys(key, batch)
        else:
            value = widget_key(key_colour, key_hex)
            if value == AUTO:
                keys = choose_key_colours(fg, a, "hues" if auto_from == AUTO_FROM[1] else None,
                                          share=share_key_across_batch)
            else:
                keys = [value] * batch
        canvas = torch.tensor([k.rgb for k in keys], dtype=fg.dtype, device=fg.device)[:, :, None, None]
        out = alpha_over(fg, a, canvas.expand(-1, -1, *fg.shape[-2:]))
        return io.NodeOutput(to_image(out), tuple(keys), to_mask(a),
                             ui=ui.PreviewText(f"canvas: {key_summary(keys)}"))


def object_and_alpha(image, alpha=None, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B,H,W,3|4] + alpha MASK (1 = opaque) or mask MASK (1 = transparent) -> fg [B,3,H,W], alpha
    [B|1,1,H,W] in [0,1] (1 = opaque); ``ValueError`` naming the input for a missing or mismatched alpha."""
    if alpha is not None and mask is not None:
        raise ValueError("mask: connect either alpha (1 = opaque) or mask (1 = transparent, LoadImage's), not both")
    if mask is not None:
        if (isinstance(mask, torch.Tensor) and isinstance(image, torch.Tensor) and image.ndim == 4
                and tuple(mask.shape[-2:]) == (_EMPTY_MASK_SIDE, _EMPTY_MASK_SIDE)
                and tuple(image.shape[1:3]) != (_EMPTY_MASK_SIDE,) * 2 and not bool(mask.any())):
            raise ValueError("mask: an empty 64x64 mask, what LoadImage gives for a picture without transparency; "
                             "load an RGBA PNG, or connect the object's alpha")
        return split_fg_alpha(image, mask, invert=True, fg_name="image", alpha_name="mask")
    if alpha is None and not (isinstance(image, torch.Tensor) and image.ndim == 4 and image.shape[-1] == 4):
        raise ValueError("alpha: the object needs its transparency: connect alpha (1 = opaque), mask (1 = "
                         "transparent, LoadImage's MASK) or an RGBA IMAGE [B,H,W,4]")
    return split_fg_alpha(image, alpha, fg_name="image", alpha_name="alpha")


NODES = [DiffuMattingObjectOnCanvas]
