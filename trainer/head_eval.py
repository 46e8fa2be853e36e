"""Held-out evaluation of a matting head (the head trainer's monitor and the benchmark)."""

from __future__ import annotations

import torch

from ..matting_head.keyer import prior_alpha
from .augment import PURE_GREEN, crop_to_multiple, green_canvas, over
from .pairs import Pair


@torch.no_grad()
def prepare_eval(backend, pairs: list[Pair], realistic: bool = False, key=PURE_GREEN, seed: int = 1234,
                 keep_taps: bool = True) -> list[dict]:
    """pairs -> per pair a dict (name, rgb [1,3,H,W], taps, alpha [1,1,H,W], key [1,3], image, latent): each pair
    cropped to a multiple of 8, composited on a canvas of ``key``, encoded and decoded with taps."""
    out = []
    for i, p in enumerate(pairs):
        fg, a = crop_to_multiple(p.fg), crop_to_multiple(p.alpha)
        g = torch.Generator().manual_seed(seed + i)
        canvas = green_canvas(a.shape[-2], a.shape[-1], key, realistic, g)
        image = over(fg, a, canvas)[None]
        z = backend.encode(image)
        rgb, taps = backend.decode_taps(z)
        if getattr(backend, "head_image", "decoded") == "original":
            rgb = image.to(rgb)  # side-decoder set-up: the head reads the composite, the decoder gives its taps
        out.append({"name": p.name, "rgb": rgb, "taps": [t.half() for t in taps] if keep_taps and taps else None,
                    "alpha": a[None], "key": torch.as_tensor(key, dtype=torch.float32)[None], "image": image,
                    "latent": z})
    return out


@torch.no_grad()
def head_alpha(head, item: dict) -> torch.Tensor:
    """The head's alpha [1,1,H,W] in [0,1] for a prepared item, on the head's device (the item may be elsewhere)."""
    dev = head.stem8.weight.device
    rgb = item["rgb"].to(dev)
    ka = head.prior(rgb, item["key"].to(dev))
    taps = None if head.image_only else [t.to(dev).float() for t in item["taps"]]
    return head(taps, rgb, ka, key=item["key"].to(dev))["alpha"]


def make_monitor(prepared: list[dict]):
    """prepared items -> monitor(head) -> {"heldout_mse", "heldout_key_mse", "ratio", "per_subject"} (means)."""
    key_mse: dict[str, list[float]] = {}  # per prior kind, computed once

    def monitor(head):
        kind = head.config["prior"]
        if kind not in key_mse:
            key_mse[kind] = [torch.mean((prior_alpha(it["rgb"], it["key"].to(it["rgb"]), kind)
                                         - it["alpha"].to(it["rgb"])) ** 2).item() for it in prepared]
        mses = [torch.mean((head_alpha(head, it).to(it["alpha"]) - it["alpha"]) ** 2).item() for it in prepared]
        m, k = sum(mses) / len(mses), sum(key_mse[kind]) / len(key_mse[kind])
        return {"heldout_mse": m, "heldout_key_mse": k, "ratio": m / k,
                "per_subject": {it["name"]: round(x, 6) for it, x in zip(prepared, mses)}}

    return monitor
