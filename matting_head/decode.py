"""Decode a latent and predict alpha in the same pass: decoder taps (projected inside the hooks) -> head.

``decode_with_head`` works for any decoder given as a callable plus its ``TapSpec``; it has an untiled path and a
tiled path for large images (tiles blended with linear ramps over the overlap, one key colour for all tiles)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..common.keycolour import KeyColour
from .keyer import estimate_key, key_from_pixels
from .taps import TapRecorder, TapSpec

BORDER_STRIP = 4  # latent px decoded along each image side to estimate the key colour in tiled mode


def key_list(key, batch: int) -> list[KeyColour]:
    """A KeyColour, 1 or ``batch`` of them, or a [3]/[B,3] tensor -> ``batch`` KeyColours (what the head keyed with)."""
    if isinstance(key, KeyColour):
        return [key] * batch
    if isinstance(key, torch.Tensor):
        rows = key.detach().float().reshape(-1, 3).expand(batch, 3).clamp(0, 1).tolist()
        return [KeyColour(tuple(r), "rgb") for r in rows]
    key = list(key)
    return key * batch if len(key) == 1 else key


def _head_pass(decode_fn, spec: TapSpec, head, latent, key):
    transforms = [lambda t, i=i: head.project(i, t) for i in range(4)]
    with TapRecorder(spec.modules, transforms) as rec:
        rgb = decode_fn(latent)
    rgb = rgb.to(head.stem8.weight)
    if key is None:
        key = estimate_key(rgb)
    ka = head.prior(rgb, key)
    out = head(rec.take(), rgb, ka, projected=True)  # taps passed inline: the head may free them as it goes
    res = {"image": rgb, "alpha": out["alpha"]}
    res["fg"] = out.get("fg", rgb)
    res["keys"] = key_list(key, rgb.shape[0])
    return res


def border_key(decode_fn, latent: torch.Tensor, strip: int = BORDER_STRIP) -> list:
    """B KeyColours estimated from decoding only thin strips of the latent along the four image sides."""
    h, w = latent.shape[-2:]
    s = min(strip, h, w)
    rings = []
    for z in (latent[..., :s, :], latent[..., h - s:, :], latent[..., :, :s], latent[..., :, w - s:]):
        img = decode_fn(z).float()
        rings.append(img)
    top, bottom, left, right = rings
    b = 4
    px = torch.cat([top[..., :b, :].flatten(2), bottom[..., -b:, :].flatten(2),
                    left[..., :, :b].flatten(2), right[..., :, -b:].flatten(2)], 2)  # [B,3,N]
    return key_from_pixels(px)


def tile_ramp(n: int, overlap: int, lead: bool, trail: bool, device) -> torch.Tensor:
    """[n] cross-fade weights of a tile: rising over ``overlap`` px at an inner leading edge, falling at an inner
    trailing edge, else 1."""
    w = torch.ones(n, device=device)
    if overlap > 0:
        r = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if lead:
            w[:overlap] = torch.minimum(w[:overlap], r)
        if trail:
            w[n - overlap:] = torch.minimum(w[n - overlap:], r.flip(0))
    return w


def tile_starts(total: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along a side of ``total`` px: tiles of ``tile`` px overlapping by ``overlap``, the last flush."""
    if total <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, total - tile, step)) + [total - tile]
    return sorted(set(starts))


def decode_with_head(decode_fn: Callable[[torch.Tensor], torch.Tensor], spec: TapSpec, head, latent: torch.Tensor,
                     key=None, tile: int = 0, overlap: int = 16, scale: int = 8,
                     check_interrupt: Callable[[], None] | None = None,
                     on_tile: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """latent [B,C,h,w] -> {"image": [B,3,H,W], "alpha": [B,1,H,W], "fg": [B,3,H,W]} all in [0,1], H = scale*h, and
    "keys": the B KeyColours the head keyed with.

    ``decode_fn(latent) -> [B,3,H,W] in [0,1]`` runs the decoder whose modules ``spec`` taps. ``key``: a KeyColour,
    1 or B of them, or a [B,3]/[3] tensor (None = estimated from the decoded image's border ring, once for all
    tiles). ``tile`` > 0: latent tile size (px of latent) with
    ``overlap`` latent px between tiles."""
    if latent.ndim != 4:
        raise ValueError(f"latent: expected [B,C,h,w], got {tuple(latent.shape)}")
    if latent.shape[1] != spec.latent_channels:
        raise ValueError(f"latent: the VAE decodes {spec.latent_channels}-channel latents, got {latent.shape[1]} "
                         "channels (was it made by another model family?)")
    h, w = latent.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        if check_interrupt:
            check_interrupt()
        out = _head_pass(decode_fn, spec, head, latent, key)
        if on_tile:
            on_tile()
        return out
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap: expected 0 <= overlap < tile ({tile}), got {overlap}")
    if key is None:
        key = border_key(decode_fn, latent)
    B = latent.shape[0]
    H, W = h * scale, w * scale
    dev = head.stem8.weight.device
    acc = {k: torch.zeros(B, c, H, W, device=dev) for k, c in (("image", 3), ("alpha", 1), ("fg", 3))}
    wsum = torch.zeros(1, 1, H, W, device=dev)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for y0 in ys:
        for x0 in xs:
            if check_interrupt:
                check_interrupt()
            th, tw = min(tile, h), min(tile, w)
            out = _head_pass(decode_fn, spec, head, latent[..., y0:y0 + th, x0:x0 + tw], key)
            o = overlap * scale
            wy = tile_ramp(th * scale, o, y0 > 0, y0 + th < h, dev)
            wx = tile_ramp(tw * scale, o, x0 > 0, x0 + tw < w, dev)
            wt = (wy[:, None] * wx[None, :])[None, None]
            Y, X = y0 * scale, x0 * scale
            for k in acc:
                acc[k][..., Y:Y + th * scale, X:X + tw * scale] += out[k].float() * wt
            wsum[..., Y:Y + th * scale, X:X + tw * scale] += wt
            if on_tile:
                on_tile()
    return {**{k: (v / wsum).clamp(0, 1) for k, v in acc.items()}, "keys": key_list(key, B)}


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    """Number of head passes decode_with_head makes for a latent of h x w."""
    if tile <= 0 or (h <= tile and w <= tile):
        return 1
    return len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap))
