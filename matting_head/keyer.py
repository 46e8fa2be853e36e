"""The head's prior input (``config["prior"]``, recorded in the head file's metadata), keyed against a KeyColour.

Two priors, each an explicit dependency that a trained head is tied to:

- ``"colour_difference"``: a fixed Vlahos keyer on the pack's one colour-difference primitive
  (``common.keycolour.key_difference``: ``G - max(R, B)`` for a green key), with fixed black/white points. It does
  not depend on GreenPost; it changes only if that primitive does (tested to equal the older argmax form for every
  key with one dominant channel).
- ``"greenpost"``: GreenPost's alpha (``greenpost.green_post``, fixed despeckle area). The head learns a correction
  of it, so such a head depends on GreenPost's behaviour: a change in GreenPost's alpha changes its output, and the
  head benchmark (bench/matting_head.py) is the check to rerun after one.

The key for "auto" comes from the pack's one estimator (``common.keycolour``) on the decoded image's border ring
(or, tiled, on the decoded border strips)."""

from __future__ import annotations

import torch

from ..common.keycolour import KeyColour, estimate_key_colours_from_pixels, key_channels, key_difference, key_rgb

BORDER = 4  # px ring used to estimate the key colour


def border_ring(image: torch.Tensor, border: int = BORDER) -> torch.Tensor:
    """image: [B,3,H,W] -> the pixels of its ``border``-px outer ring [B,3,N] (where the canvas shows)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    b = max(1, min(border, image.shape[-1] // 4, image.shape[-2] // 4))
    return torch.cat([image[..., :b, :].flatten(2), image[..., -b:, :].flatten(2),
                      image[..., :, :b].flatten(2), image[..., :, -b:].flatten(2)], 2)


def estimate_key(image: torch.Tensor, border: int = BORDER) -> list[KeyColour]:
    """image: [B,3,H,W] in [0,1] -> B KeyColours estimated from its border ring (``common.keycolour``'s estimator:
    hue-histogram mode of the saturated pixels; ``source="default"`` and a warning when no screen shows)."""
    return key_from_pixels(border_ring(image, border))


def key_from_pixels(pixels: torch.Tensor) -> list[KeyColour]:
    """pixels [B,3,N] in [0,1] (e.g. an image border, or the border strips of a tiled decode) -> B KeyColours."""
    return estimate_key_colours_from_pixels(pixels.detach().float())


PRIORS = ("colour_difference", "greenpost")


def prior_alpha(image: torch.Tensor, key, kind: str = "colour_difference") -> torch.Tensor:
    """image [B,3,H,W] in [0,1], key: a KeyColour, 1 or B of them, or a [3]/[B,3] tensor in [0,1] -> the head's prior
    alpha [B,1,H,W] in [0,1]."""
    if kind == "colour_difference":
        return colour_difference_alpha(image, key)
    if kind == "greenpost":
        from ..greenpost import green_post

        if isinstance(key, torch.Tensor):
            key = key.to(image).reshape(-1, 3).float().expand(image.shape[0], 3)
        # KeyColours go through as they are (a key that estimation did not find gives GreenPost's opaque result)
        # despeckle at a fixed 8 px (GreenPost's default scales with the image): the same for a training crop, a
        # tile and a whole image
        speck = 8.0 / (image.shape[-2] * image.shape[-1])
        with torch.no_grad():
            return green_post(image.detach().float().clamp(0, 1), key_colour=key,
                              despeckle_area=speck).alpha.to(image.dtype)
    raise ValueError(f"prior: expected one of {', '.join(PRIORS)}, got {kind!r}")


def colour_difference_alpha(image: torch.Tensor, key, black: float = 0.08, white: float = 0.92) -> torch.Tensor:
    """image [B,3,H,W] in [0,1], key: a KeyColour, 1 or B of them, or a [3]/[B,3] tensor in [0,1] -> alpha
    [B,1,H,W] in [0,1] (1 = opaque).

    The pack's colour difference (``common.keycolour.key_difference``: the key's high channels minus its low ones,
    ``G - max(R, B)`` for a green key), ``alpha = 1 - d(I) / d(K)``, then black/white points."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    if isinstance(key, torch.Tensor):  # the training path: no validation round trip to the host
        if key.numel() not in (3, 3 * image.shape[0]):
            raise ValueError(f"key: expected [3] or [{image.shape[0]},3], got {tuple(key.shape)}")
        key = key.to(image).reshape(-1, 3).expand(image.shape[0], 3)
    else:
        key = key_rgb(key, image.shape[0], image.device, name="key").to(image.dtype)
    high = key_channels(key.float())
    kd = key_difference(key, high)[:, :, None, None].clamp_min(0.05)  # [B,1,1,1]
    raw = 1 - key_difference(image, high) / kd
    return ((raw - black) / (white - black)).clamp(0, 1)
