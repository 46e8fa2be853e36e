"""GreenPost's learned mode: the image-only keyer (``MattingHead`` with ``inputs="image"``) refines GreenPost's alpha.

    classical GreenPost (alpha prior + the key it keyed against) -> keyer -> refined alpha
    -> GreenPost with that alpha given (canvas clean-up, unmixing, despill) -> straight RGBA

``refine_alpha`` runs the keyer whole or in overlapping tiles (linear cross-fade in the overlap; large images stay
within a bounded memory); ``learned_green_post`` is the whole learned path; ``resolve_keyer`` turns a user's mode
("auto" / "learned" / "classical") and weight file into the keyer to run (or None for the classical path).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .decode import tile_ramp, tile_starts
from .network import MattingHead

KEYER_FILE = Path(__file__).resolve().parents[1] / "weights" / "diffumatting_keyer.safetensors"
MODES = ("auto", "learned", "classical")
TILE = 1024  # px per tile side (the keyer's receptive field is about 200 px; the overlap cross-fades the seams)
OVERLAP = 128  # px shared by neighbouring tiles
_CACHE: dict = {}


class KeyerWarning(UserWarning):
    """The learned mode fell back to the classical path ("auto" and no usable keyer file)."""


def load_keyer(path: str | os.PathLike | None = None) -> MattingHead:
    """A keyer file (default: the shipped ``weights/diffumatting_keyer.safetensors``) -> the image-only head in eval
    mode (cached per path and modification time). ValueError naming the file when it is missing, corrupt, or not an
    image-only keyer."""
    from .weights import load_head

    path = os.fspath(path or KEYER_FILE)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        raise ValueError(f"keyer weights: {path} does not exist (reinstall the pack, or choose the classical "
                         "mode)") from None
    hit = _CACHE.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    head, info = load_head(path)
    if not head.image_only:
        raise ValueError(f"keyer weights: {os.path.basename(path)} is a decoder matting head (for "
                         f"{info.get('decoder_name') or info.get('decoder_family')}), not the image-only keyer")
    _CACHE.clear()
    _CACHE[path] = (stamp, head)
    return head


def resolve_keyer(mode: str = "auto", path: str | os.PathLike | None = None) -> MattingHead | None:
    """mode ("auto": the learned keyer when its file loads, else a KeyerWarning and the classical path; "learned":
    the keyer or a ValueError naming the file; "classical": None) -> the keyer to run, or None."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "classical":
        return None
    try:
        return load_keyer(path)
    except ValueError as exc:
        if mode == "learned":
            raise
        warnings.warn(f"{exc}; keying with the classical GreenPost instead", KeyerWarning, stacklevel=2)
        return None


def _run(head: MattingHead, rgb: torch.Tensor, prior: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """One tile: rgb [B,3,h,w], prior [B,1,h,w], key [B,3] -> alpha [B,1,h,w] (padded to a multiple of 8 inside)."""
    h, w = rgb.shape[-2:]
    ph, pw = -h % 8, -w % 8
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
        prior = F.pad(prior, (0, pw, 0, ph), mode="replicate")
    return head(None, rgb, prior, key=key)["alpha"][..., :h, :w]


@torch.no_grad()
def refine_alpha(head: MattingHead, image: torch.Tensor, prior: torch.Tensor, key: torch.Tensor,
                 tile: int = TILE, overlap: int = OVERLAP, on_tile=None) -> torch.Tensor:
    """image [B,3,H,W] in [0,1], prior [B,1,H,W] in [0,1] (GreenPost's alpha), key [B,3] in [0,1] (the key it
    keyed against) -> refined alpha [B,1,H,W] in [0,1] on image's device and dtype. Runs the keyer on the image's
    device (in float32, or the keyer's dtype); images larger than ``tile`` go in overlapping tiles, cross-faded over
    ``overlap`` px. ``on_tile(done, total)`` is called after each tile (progress bars, interruption)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected [B,3,H,W], got {tuple(image.shape)}")
    if prior.shape != (image.shape[0], 1, *image.shape[-2:]):
        raise ValueError(f"prior: expected [B,1,H,W] = {[image.shape[0], 1, *image.shape[-2:]]}, got {list(prior.shape)}")
    if not 64 <= tile or not 0 <= overlap < tile // 2:
        raise ValueError(f"tile/overlap: expected tile >= 64 and 0 <= overlap < tile / 2, got {tile}/{overlap}")
    w0 = next(head.parameters())
    if w0.device != image.device:
        head = head.to(image.device)
    dtype = w0.dtype
    x, p, k = image.to(dtype), prior.to(dtype), key.to(image.device, dtype).reshape(-1, 3)
    if k.shape[0] != image.shape[0]:
        k = k.expand(image.shape[0], 3)
    H, W = image.shape[-2:]
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    total = len(ys) * len(xs)
    if total == 1:
        out = _run(head, x, p, k)
        if on_tile is not None:
            on_tile(1, 1)
        return out.to(image.dtype)
    acc = torch.zeros(image.shape[0], 1, H, W, device=image.device, dtype=torch.float32)
    norm = torch.zeros(1, 1, H, W, device=image.device, dtype=torch.float32)
    done = 0
    for y0 in ys:
        th = min(tile, H - y0)
        wy = tile_ramp(th, overlap, y0 > 0, y0 + th < H, image.device)
        for x0 in xs:
            tw = min(tile, W - x0)
            wx = tile_ramp(tw, overlap, x0 > 0, x0 + tw < W, image.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            a = _run(head, x[..., y0:y0 + th, x0:x0 + tw], p[..., y0:y0 + th, x0:x0 + tw], k)
            acc[..., y0:y0 + th, x0:x0 + tw] += a.float() * wt
            norm[..., y0:y0 + th, x0:x0 + tw] += wt
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return (acc / norm.clamp_min(1e-6)).clamp(0, 1).to(image.dtype)


def learned_green_post(image: torch.Tensor, head: MattingHead, key_colour="auto", high_quality: bool = False,
                       tile: int = TILE, overlap: int = OVERLAP, on_tile=None, **options):
    """image [B,3,H,W] in [0,1] -> GreenPostResult whose alpha is the keyer's refinement of GreenPost's (the fg
    unmixed against that alpha). ``key_colour``, ``high_quality`` and ``options`` as for ``green_post``; an image
    whose key GreenPost cannot use (no screen found, a grey key) keeps GreenPost's opaque result."""
    from ..greenpost import green_post

    first = green_post(image, key_colour=key_colour, high_quality=high_quality, **options)
    keys = first.keys
    usable = [k.found and k.usable for k in keys]
    if not any(usable):
        first.extras["keyer"] = "classical (no usable key colour)"
        return first
    img = image.float() if image.shape[1] == 3 else image.float().expand(-1, 3, -1, -1)
    refined = refine_alpha(head, img, first.alpha.float(), first.key_colour.float(), tile, overlap, on_tile)
    keep = torch.tensor(usable, device=refined.device)[:, None, None, None]
    alpha = torch.where(keep, refined, first.alpha.to(refined))
    result = green_post(image, alpha=alpha.to(image.dtype) if image.is_floating_point() else alpha,
                        key_colour=keys, high_quality=high_quality, **options)
    result.extras["keyer"] = "learned"
    return result


def key_image(image: torch.Tensor, keyer: MattingHead | None = None, alpha: torch.Tensor | None = None,
              key_colour="auto", high_quality: bool = False, on_tile=None, guide: torch.Tensor | None = None,
              **options):
    """The pack's keying entry point (CLI key / demo / dataset, the GreenPost node): image [B,3,H,W] in [0,1] ->
    GreenPostResult. With ``keyer`` (``resolve_keyer``) and neither ``alpha`` nor ``guide``: the learned mode
    (``learned_green_post``); otherwise classical GreenPost (a given alpha is kept as the matte either way; a
    ``guide`` [B|1,1,h,w] steers the key, see ``greenpost.guide``; the learned keyer does not run with one).
    ``result.extras["keyer"]`` names what ran."""
    from ..greenpost import green_post

    if keyer is None or alpha is not None or guide is not None:
        res = green_post(image, alpha=alpha, key_colour=key_colour, high_quality=high_quality, guide=guide, **options)
        res.extras["keyer"] = ("given alpha" if alpha is not None else
                               "classical + guide" if guide is not None else "classical")
        return res
    return learned_green_post(image, keyer, key_colour, high_quality, on_tile=on_tile, **options)


def add_keyer_arguments(parser) -> None:
    """The CLI's switch between the classical and the learned keyer (key, demo, dataset). Classical GreenPost is the
    default until a keyer beats it in cross-validation (README, "Learned keyer")."""
    parser.add_argument("--learned", action="store_true",
                        help="refine GreenPost's alpha with the bundled learned keyer "
                        "(weights/diffumatting_keyer.safetensors; experimental, see the README for when it helps)")
    parser.add_argument("--keyer", default="", metavar="FILE",
                        help="refine with this image-only keyer file (train-head --image-only); implies --learned")


def keyer_from_arguments(args) -> MattingHead | None:
    """Parsed --learned / --keyer -> the keyer to run (None: classical GreenPost). ValueError naming the file when
    the keyer asked for does not load."""
    if args.keyer:
        return resolve_keyer("learned", args.keyer)
    if args.learned:
        return resolve_keyer("learned")
    return None
