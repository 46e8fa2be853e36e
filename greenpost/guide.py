"""GreenPost's guide: a previous alpha of the object that steers the key where the image did not change.

The round trip: a transparent object is put on a flat key-colour canvas (``I0 = a F + (1 - a) K``), an image
workflow repaints that canvas (img2img, inpaint, a LoRA restyle, an upscale model), and GreenPost keys the result
with the old alpha as a *guide*, not as the final matte:

1. :func:`fit_guide` brings the guide to the image's size. A smaller guide (an upscaled image) is upsampled
   bicubically and then fitted to the new image with a colour guided filter (He et al.; alpha locally affine in the
   image's colours), so it follows the edges the upscaler drew; a larger one is area-averaged.
2. :func:`guide_change` tells, per pixel, how far the image is from *any* composite of the guide over the screen:
   with ``P = I - (1 - a) K`` (the premultiplied colour the guide implies), the image is consistent when
   ``0 <= P <= a`` in every channel (a real colour F exists); the distance to that set, in image units (0..1), is
   the change. Where the guide says "object" but the image is (nearly) the bare canvas colour, the object was
   removed there: an object colour differs from its canvas by at least :data:`OBJECT_CONTRAST` (the key was chosen
   far from it), so a pixel of alpha a should be at least ``a OBJECT_CONTRAST`` from the screen; the shortfall is
   the change. (Not "F is key-like": an object's own key-tinted colours would read as removed.) 0 where the image still is the canvas composite of the old object,
   large where something was painted on the canvas, an object part was removed, or an edge moved.
3. :func:`blend_guide`: ``alpha = (1 - w) guide + w keyed`` with ``w`` the change ramped from :data:`CHANGE_LOW` to
   :data:`CHANGE_HIGH` (plus the canvas noise) and spread over :data:`CHANGE_SPREAD` px: the old alpha where the
   image is unchanged, GreenPost's own key where it changed.
"""

from __future__ import annotations

import torch

from ..common.checks import check_unit_range
import torch.nn.functional as F

from .band import box, colour_guided_filter, morph

__all__ = ["OBJECT_CONTRAST", "CHANGE_LOW", "CHANGE_HIGH", "CHANGE_SPREAD", "MAX_ASPECT_CHANGE", "check_guide", "fit_guide",
           "guide_change", "blend_guide"]

OBJECT_CONTRAST = 0.3  # least distance (largest channel difference, 0..1) of an object colour from its canvas
CHANGE_LOW = 0.03  # image-space distance (0..1) below which a pixel is unchanged (8-bit rounding, resampling)
CHANGE_HIGH = 0.09  # ... and above which GreenPost's own key decides fully
CHANGE_SPREAD = 1  # px the change map is dilated and blurred by (an edit's edge pixels follow the edit)
MAX_ASPECT_CHANGE = 0.02  # relative aspect-ratio difference above which a guide is not of this image


def check_guide(guide, image: torch.Tensor) -> torch.Tensor:
    """guide [B|1,1,h,w] or [B|1,h,w] (1 = opaque, any size of the image's aspect ratio), image [B,3,H,W] ->
    guide [B,1,h,w] float32 in [0,1] on image's device; ``ValueError`` naming ``guide`` otherwise."""
    if not isinstance(guide, torch.Tensor):
        raise ValueError(f"guide: expected a torch tensor [B,1,H,W] (1 = opaque), got {type(guide).__name__}")
    if guide.ndim == 3:
        guide = guide[:, None]
    b, _, h, w = image.shape
    if guide.ndim != 4 or guide.shape[1] != 1 or guide.shape[0] not in (1, b) or min(guide.shape[-2:]) < 1:
        raise ValueError(f"guide: expected [B,1,h,w] with B = 1 or {b} (1 = opaque), got {tuple(guide.shape)}")
    gh, gw = guide.shape[-2:]
    if abs((gw / gh) / (w / h) - 1.0) > MAX_ASPECT_CHANGE + 1.0 / min(gh, gw):
        raise ValueError(f"guide: {gw}x{gh} px does not have the image's aspect ratio ({w}x{h} px); expected the "
                         "alpha of the object this image was made from, at any scale")
    guide = guide.float()
    if not torch.isfinite(guide).all():
        raise ValueError("guide: contains NaN or infinite values")
    check_unit_range("guide", guide)
    return guide.clamp(0, 1).expand(b, 1, gh, gw).to(image.device)


def fit_guide(guide: torch.Tensor, image: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """guide [B,1,h,w] in [0,1], image [B,3,H,W] in [0,1] -> guide [B,1,H,W] in [0,1] at the image's size: the same
    size is returned as is; smaller is upsampled (bicubic, then a colour guided filter with the image as guidance,
    radius the scale factor, so the alpha follows the new image's edges); larger is area-averaged."""
    h, w = image.shape[-2:]
    gh, gw = guide.shape[-2:]
    if (gh, gw) == (h, w):
        return guide
    if gh >= h and gw >= w:
        return F.interpolate(guide, size=(h, w), mode="area").clamp(0, 1)
    up = F.interpolate(guide, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    radius = max(1, round(max(h / gh, w / gw)))
    img = image.float().contiguous()
    fitted = colour_guided_filter(img, up.contiguous(), radius, eps)
    # the fit may only move alpha where the bicubic guide is soft: flat opaque / transparent areas stay exact
    soft = morph(((up > 0) & (up < 1)).to(torch.uint8), radius, "max") > 0
    return torch.where(soft, fitted.clamp(0, 1), up)


def guide_change(image: torch.Tensor, guide: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
    """image [B,3,H,W] in [0,1], guide [B,1,H,W] in [0,1] (at image size), screen [B,3,H,W] or [B,3,1,1] (the
    canvas colour under each pixel) -> [B,1,H,W] in [0,1]: how far the image is from a composite
    ``a F + (1 - a) K`` of the guide (image units), or how much of the guide's object is now bare canvas."""
    a = guide
    p = image - (1.0 - a) * screen  # the premultiplied colour the guide implies: a F
    gamut = torch.maximum(p - a, -p).clamp_min(0).amax(dim=1, keepdim=True)  # F outside [0, 1]
    bare = (image - screen).abs().amax(dim=1, keepdim=True)
    removed = (a * OBJECT_CONTRAST - bare).clamp_min(0)  # the object is gone: the canvas shows
    return torch.maximum(gamut, removed).clamp(0, 1)


def blend_guide(keyed: torch.Tensor, guide: torch.Tensor, change: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """keyed [B,1,H,W] (GreenPost's own alpha), guide [B,1,H,W] (fitted), change [B,1,H,W] (:func:`guide_change`),
    noise [B] canvas noise or None, all in [0,1] -> (alpha [B,1,H,W], weight of the own key [B,1,H,W]) in [0,1]."""
    lo = torch.full((keyed.shape[0], 1, 1, 1), CHANGE_LOW, device=keyed.device, dtype=keyed.dtype)
    if noise is not None:
        lo = lo + 3.0 * noise.to(lo)[:, None, None, None]  # a noisy screen moves unchanged pixels more
    w = ((change - lo) / (CHANGE_HIGH - CHANGE_LOW)).clamp(0, 1)
    if CHANGE_SPREAD > 0:
        w = box(morph(w.contiguous(), CHANGE_SPREAD, "max"), CHANGE_SPREAD).clamp(0, 1)
    return (guide + w * (keyed - guide)).clamp(0, 1), w
