"""GreenPost: classical keying of green-screen (or any key colour) images into straight RGBA; no model weights.

``green_post(image [B,3,H,W], alpha=None, key_colour="auto", high_quality=False, **options) -> GreenPostResult``
"""

from .core import GreenPostOptions, GreenPostResult, green_post
from ..common.keycolour import KeyColour, NoKeyColourWarning

__all__ = ["green_post", "GreenPostResult", "GreenPostOptions", "KeyColour", "NoKeyColourWarning"]
