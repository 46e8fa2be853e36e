"""The head's prior input: a plain colour-difference keyer (fixed, so a head trained on it never depends on how
another module's keyer evolves) or GreenPost itself (``prior = "greenpost"``: the head starts from GreenPost's
alpha and learns a correction; such a head is tied to GreenPost's behaviour, recorded in its metadata)."""

from __future__ import annotations

import torch

BORDER = 4  # px ring used to estimate the key colour


def estimate_key(image: torch.Tensor, border: int = BORDER) -> torch.Tensor:
    """image: [B,3,H,W] in [0,1] -> key colour [B,3] in [0,1]: median of the green-dominant border pixels
    (falls back to the median of the whole border when none is green-dominant)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    b = max(1, min(border, image.shape[-1] // 4, image.shape[-2] // 4))
    ring = torch.cat([image[..., :b, :].flatten(2), image[..., -b:, :].flatten(2),
                      image[..., :, :b].flatten(2), image[..., :, -b:].flatten(2)], 2)  # [B,3,N]
    return key_from_pixels(ring).to(image.dtype)


def key_from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """pixels [B,3,N] in [0,1] (e.g. an image border) -> key [B,3]: median of the green-dominant ones."""
    keys = []
    for px in pixels.float():
        green = px[1] - torch.maximum(px[0], px[2])
        sel = px[:, green > 0.15]
        keys.append((sel if sel.shape[1] >= 16 else px).median(dim=1).values)
    return torch.stack(keys)


PRIORS = ("colour_difference", "greenpost")


def prior_alpha(image: torch.Tensor, key: torch.Tensor, kind: str = "colour_difference") -> torch.Tensor:
    """image [B,3,H,W] in [0,1], key [B,3] or [3] in [0,1] -> the head's prior alpha [B,1,H,W] in [0,1]."""
    if kind == "colour_difference":
        return colour_difference_alpha(image, key)
    if kind == "greenpost":
        from ..greenpost import green_post

        key = key.to(image).reshape(-1, 3).float().expand(image.shape[0], 3)
        # despeckle at a fixed 8 px (GreenPost's default scales with the image): the same for a training crop, a
        # tile and a whole image
        speck = 8.0 / (image.shape[-2] * image.shape[-1])
        with torch.no_grad():
            return green_post(image.detach().float().clamp(0, 1), key_colour=key,
                              despeckle_area=speck).alpha.to(image.dtype)
    raise ValueError(f"prior: expected one of {', '.join(PRIORS)}, got {kind!r}")


def colour_difference_alpha(image: torch.Tensor, key: torch.Tensor, black: float = 0.08,
                            white: float = 0.92) -> torch.Tensor:
    """image [B,3,H,W] in [0,1], key [B,3] or [3] in [0,1] -> alpha [B,1,H,W] in [0,1] (1 = opaque).

    Vlahos-style difference along the key's dominant channel: ``d(x) = x_c - max(other channels)``,
    ``alpha = 1 - d(I) / d(K)``, then black/white points."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    key = key.to(image).reshape(-1, 3)
    if key.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"key: expected [3] or [{image.shape[0]},3], got {tuple(key.shape)}")
    c = key.argmax(1)  # dominant channel per image
    onehot = torch.nn.functional.one_hot(c, 3).to(image)[:, :, None, None]  # [B,3,1,1]
    dom = (image * onehot).sum(1, keepdim=True)
    others = torch.where(onehot.bool(), torch.full_like(image, -1.0), image).amax(1, keepdim=True)
    kd = ((key[:, :, None, None] * onehot).sum(1, keepdim=True)
          - torch.where(onehot.bool(), torch.full_like(onehot, -1.0), key[:, :, None, None]).amax(1, keepdim=True))
    kd = kd.clamp_min(0.05)
    raw = 1 - (dom - others) / kd
    return ((raw - black) / (white - black)).clamp(0, 1)
