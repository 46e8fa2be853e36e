"""KeyColour node: a key colour for the DIFFUMATTING_KEY_COLOUR socket, from a preset, a hex colour or an image."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..common.keycolour import AUTO, resolve_key_colours
from .common import (category, check_key_widget, image_to_bchw, key_colour_options, key_socket_output,
                     key_summary, preset_label, widget_key)


class DiffuMattingKeyColour(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingKeyColour",
            display_name="KeyColour",
            category=category("keying"),
            description="A key colour for the 'key' inputs of GreenControl, MattingHeadDecode, GreenPost and "
            "SaveMattingDataset: a preset, any hex colour, or estimated from an image (auto). The preview shows "
            "the colour and how it was obtained.",
            inputs=[
                io.Combo.Input("key_colour", options=key_colour_options(), default=preset_label("chroma_green"),
                               tooltip="A preset (its hex value is shown), 'custom hex' to use the hex field, or "
                               "'auto' to estimate it from the connected image."),
                io.String.Input("key_hex", default="#00B140", tooltip="Key colour as #RRGGBB (or R,G,B), used when "
                                "key_colour is 'custom hex'."),
                io.Image.Input("image", optional=True, tooltip="The picture to estimate the key colour from "
                               "('auto' only)."),
                io.Boolean.Input("share_across_batch", default=True, optional=True, tooltip="'auto' on a batch: one "
                                 "colour for all images (stable across video frames); off: one per image."),
            ],
            outputs=[key_socket_output("The key colour: one for the batch, or one per image ('auto' without "
                                       "sharing).")],
        )

    @classmethod
    def validate_inputs(cls, key_colour) -> bool | str:
        return check_key_widget(key_colour)

    @classmethod
    def execute(cls, key_colour, key_hex, image=None, share_across_batch=True) -> io.NodeOutput:
        value = widget_key(key_colour, key_hex)
        if value == AUTO:
            if image is None:
                raise ValueError("image: 'auto' estimates the key colour from an image; connect one or pick a preset")
            keys = resolve_key_colours(AUTO, image_to_bchw(image, "image")[:, :3], share=share_across_batch)
        else:
            keys = [value]
        text = key_summary(keys)
        if not all(k.found for k in keys):
            text += " (no key colour found in the image: keying against it gives an opaque result)"
        return io.NodeOutput(tuple(keys), ui=ui.PreviewText(text))


NODES = [DiffuMattingKeyColour]
