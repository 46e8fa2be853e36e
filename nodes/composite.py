"""AlphaComposite: a straight (or premultiplied) object over a background image or a batch of video frames."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..compositing import ANCHORS, composite
from .common import category, image_to_bchw, mask_to_b1hw, to_image, to_mask


def _check_values(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming the input for an empty batch or NaN / infinite values (never passed on or written)."""
    if t.shape[0] == 0 or t.numel() == 0:
        raise ValueError(f"{name}: empty batch (shape {tuple(t.shape)}); expected at least one image")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: holds {bad} NaN or infinite value(s); expected finite values in [0, 1]")


def split_fg_alpha(fg: torch.Tensor, alpha: torch.Tensor | None, invert: bool = False, fg_name: str = "fg",
                   alpha_name: str = "alpha") -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE (RGB or RGBA) + optional MASK -> fg [B,3,H,W], alpha [B|1,1,H,W] (1 = opaque).

    A connected ``alpha`` wins over an RGBA image's own 4th channel; ``invert`` reads a ComfyUI-polarity mask
    (1 = transparent, as LoadImage gives) as alpha. An empty batch or a NaN / infinite value in either is a
    ``ValueError`` naming the input.
    """
    x = image_to_bchw(fg, fg_name)
    _check_values(x, fg_name)
    if alpha is not None:
        a = mask_to_b1hw(alpha, alpha_name).to(x.device)
        _check_values(a, alpha_name)
        if invert:
            a = 1 - a
        if a.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"{alpha_name}: mask size {tuple(a.shape[-2:])} (HxW) must match {fg_name} size "
                             f"{tuple(x.shape[-2:])}")
    elif x.shape[1] == 4:
        a = x[:, 3:4]
    else:
        raise ValueError(f"{alpha_name}: not connected and {fg_name} has no alpha channel (connect a MASK with "
                         "1 = opaque, or an RGBA image)")
    return x[:, :3], a


class DiffuMattingAlphaComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuMattingAlphaComposite",
            display_name="AlphaComposite",
            category=category("compositing"),
            description="Composite a transparent object (straight fg + alpha) over a background image or a batch "
            "of video frames: position, scale and anchor, optional linear-light blending and light wrap. Batches: "
            "equal sizes, or one object over many frames, or many objects over one background. The result has the "
            "background's size; the object is clipped at its edges.",
            inputs=[
                io.Image.Input("fg", tooltip="The object's colour, straight (not premultiplied) unless 'premultiplied' "
                               "is on. An RGBA image also works when 'alpha' is not connected."),
                io.Image.Input("background", tooltip="The background image, or a batch of video frames."),
                io.Mask.Input("alpha", optional=True, tooltip="The object's alpha, 1 = opaque (GreenPost / "
                              "MattingHeadDecode 'alpha'). For a ComfyUI mask (1 = transparent, e.g. from LoadImage) "
                              "turn on 'invert_alpha'."),
                io.Float.Input("x", default=0.5, min=-1.0, max=2.0, step=0.01,
                               tooltip="Horizontal position of the object's anchor, as a fraction of the background "
                               "width (0 = left edge, 0.5 = centre, 1 = right edge)."),
                io.Float.Input("y", default=0.5, min=-1.0, max=2.0, step=0.01,
                               tooltip="Vertical position of the object's anchor, as a fraction of the background "
                               "height (0 = top, 1 = bottom)."),
                io.Float.Input("scale", default=1.0, min=0.01, max=16.0, step=0.01,
                               tooltip="Size factor on the object's own pixels (1 = unchanged)."),
                io.Combo.Input("anchor", options=list(ANCHORS), default="center",
                               tooltip="Which point of the object is placed at (x, y)."),
                io.Boolean.Input("premultiplied", default=False,
                                 tooltip="On: 'fg' is premultiplied (colour x alpha). Off: 'fg' is straight colour, "
                                 "as GreenPost and MattingHeadDecode output."),
                io.Boolean.Input("linear_light", default=False,
                                 tooltip="Blend in linear light (decode sRGB, mix, re-encode): physically right, "
                                 "avoids dark fringes on soft edges."),
                io.Float.Input("light_wrap", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Strength of the light wrap: the background's colour bleeding over the "
                               "object's edges (0 = off)."),
                io.Float.Input("light_wrap_radius", default=8.0, min=0.5, max=256.0, step=0.5,
                               tooltip="Reach of the light wrap in pixels."),
                io.Boolean.Input("invert_alpha", default=False,
                                 tooltip="On: read 'alpha' as a ComfyUI mask (1 = transparent)."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The composite, at the background's size."),
                io.Mask.Output(display_name="alpha", tooltip="The placed object's coverage on the background "
                               "(1 = object, 0 = background only)."),
                io.Mask.Output(display_name="mask", tooltip="The same coverage in ComfyUI's mask polarity "
                               "(1 = no object, background shows; 0 = object)."),
            ],
        )

    @classmethod
    def execute(cls, fg, background, x=0.5, y=0.5, scale=1.0, anchor="center", premultiplied=False,
                linear_light=False, light_wrap=0.0, light_wrap_radius=8.0, invert_alpha=False, alpha=None) -> io.NodeOutput:
        fg_t, a = split_fg_alpha(fg, alpha, invert=invert_alpha)
        bg = image_to_bchw(background, "background")[:, :3].to(fg_t.device)
        _check_values(bg, "background")
        image, cover = composite(fg_t, a, bg, x=x, y=y, scale=scale, anchor=anchor, premultiplied=premultiplied,
                                 linear_light=linear_light, light_wrap_strength=light_wrap,
                                 light_wrap_radius=light_wrap_radius)
        return io.NodeOutput(to_image(image), to_mask(cover), to_mask(1 - cover))


NODES = [DiffuMattingAlphaComposite]
