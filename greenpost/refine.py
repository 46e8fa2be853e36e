"""Stage 4, refinement: a guided filter with the image's colours as guide fits alpha to the local colour lines in
the transition band (on the band's bounding crop, one crop for the batch); JPEG / video chroma detection for the
high-quality mode. Batch-wide: two host syncs per batch (the crop)."""

from __future__ import annotations

import torch

from .band import bbox, chroma_detail_ratio, colour_guided_filter, guided_filter, morph

CHROMA_SUBSAMPLED = 0.5  # band chroma_detail_ratio below this: subsampled (bench, 320 px window: <= 0.32 vs >= 0.55)


def transition_band(a: torch.Tensor, radius: int) -> torch.Tensor:
    """a [B,1,H,W] alpha -> [B,1,H,W] bool: 0 < alpha < 1, dilated by ``radius`` px."""
    return morph(((a > 0) & (a < 1)).to(torch.uint8), radius, "max") > 0


def band_box(band: torch.Tensor, radius: int) -> tuple[int, int, int, int] | None:
    """band [B,1,H,W] bool -> (y0, y1, x0, x1): the bounding box of every image's band, padded by a refinement
    window (2 radius + 1), or None when no image has a transition."""
    return bbox(band.any(dim=0)[0], 2 * radius + 1)


def chroma_subsampled(image: torch.Tensor, band: torch.Tensor, window: int = 320, min_pixels: int = 2000
                      ) -> torch.Tensor:
    """image [B,3,h,w] in [0,1] (the band's crop), band [B,1,h,w] bool -> [B] bool: whether each image's chroma looks
    subsampled (JPEG / video 4:2:0), read on at most a window x window part centred on a band pixel in the middle
    rows (a property of the whole image; bounded cost). Too little band to judge: False (the sharp fit, right
    for lossless images)."""
    b, _, h, w = image.shape
    if h * w > window * window:
        rows = band.any(dim=3)[:, 0]  # [B,h]
        cy = (rows.cumsum(dim=1) > (rows.sum(dim=1, keepdim=True) // 2)).int().argmax(dim=1)  # the middle band row
        cols = band[torch.arange(b, device=band.device), 0, cy]  # [B,w] (not a centroid: it may fall in a hole of
        cx = (cols.cumsum(dim=1) > (cols.sum(dim=1, keepdim=True) // 2)).int().argmax(dim=1)  # a ring-shaped band)
        wy, wx = min(window, h), min(window, w)
        y0 = (cy - window // 2).clamp(max=h - window).clamp(min=0)
        x0 = (cx - window // 2).clamp(max=w - window).clamp(min=0)
        ys = (y0[:, None] + torch.arange(wy, device=band.device))[:, :, None]  # [B,wy,1]
        xs = (x0[:, None] + torch.arange(wx, device=band.device))[:, None, :]  # [B,1,wx]
        bi = torch.arange(b, device=band.device)[:, None, None]
        image = image[bi, :, ys, xs].permute(0, 3, 1, 2).contiguous()  # [B,3,wy,wx]
        band = band[bi, 0, ys, xs][:, None]
    enough = band.flatten(1).sum(dim=1) >= min_pixels
    if min(band.shape[-2:]) < 16:
        return torch.zeros_like(enough)
    return enough & (chroma_detail_ratio(image, band) < CHROMA_SUBSAMPLED)


def refine_alpha(a: torch.Tensor, img: torch.Tensor, noise: torch.Tensor, radius: int, eps: float, eps_noise: float,
                 subsample: int, colour: bool, fit_blur: int, subsampled: torch.Tensor | None, two_scales: bool,
                 strength: torch.Tensor) -> None:
    """In place on ``a`` [B,1,H,W] (contiguous): img [B,3,H,W] guide in [0,1], noise [B] canvas noise (the
    regularisation grows with it: ``eps + eps_noise noise^2``), ``fit_blur`` px (-1: 1 where ``subsampled`` [B] bool,
    else 0), ``two_scales``: average in a second fit at twice the window on a twice coarser grid, strength [B] in
    [0,1] (0 = leave that image alone). Only band pixels the keyer does not see as pure canvas change (no haze
    around hard edges)."""
    band = transition_band(a, radius)
    box = band_box(band, radius)
    if box is None:
        return
    y0, y1, x0, x1 = box
    crop = img[:, :, y0:y1, x0:x1]
    ac = a[:, :, y0:y1, x0:x1]
    src = ac.contiguous()
    eps_b = (eps + eps_noise * noise.square()).view(-1, 1, 1, 1)
    if colour:
        # colour guide: alpha is locally affine in RGB wherever a window mixes the screen with one or two
        # foreground colours (the colour-line model of closed-form matting); a grey guide cannot separate a
        # foreground whose luminance equals the screen's
        blur, where = (fit_blur, None) if fit_blur >= 0 else ((1, subsampled) if subsampled is not None else (0, None))
        ref = colour_guided_filter(crop, src, radius, eps_b, subsample, blur, where)
        if two_scales:
            # wider colour lines for wide soft regions; the two fits are averaged
            coarse = colour_guided_filter(crop, src, 2 * radius, eps_b, 2 * subsample, blur, where)
            ref = 0.5 * (ref + coarse)
        ref = ref.clamp_(0, 1)
    else:
        luma = (crop * crop.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        ref = guided_filter(luma, src, radius, eps_b, subsample).clamp_(0, 1)
    st = strength.view(-1, 1, 1, 1)
    new = torch.where(st >= 1, ref, ac + st * (ref - ac))
    change = band[:, :, y0:y1, x0:x1] & (ac > 0) & (st > 0)
    ac.copy_(torch.where(change, new, ac))
