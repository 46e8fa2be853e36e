"""The head training loop (on the training toolkit): matting head on a frozen decoder.

Green composites -> encode -> (slightly noised) latent -> decode with taps -> head -> alpha, against the ground
truth. Samples are produced into a buffer that is partly refreshed every step (the frozen encoder/decoder cost far
more than the head, so each decoded sample is reused several times). The network, taps and weights format live
in ``matting_head/``; the checkpoint, schedule, seeding, pair loading, augmentation and matte generator come
from this package (``checkpoint``, ``schedule``, ``seeding``, ``pairs``, ``augment``) and ``synthetic``.

Checkpoints (``<out>.ckpt.safetensors``: head, Adam, LR scheduler, RNG, step, the decoder's fingerprint and the
head's architecture) are written atomically every ``ckpt_every`` steps; ``resume`` continues from the last one
(refused, with a message naming the file, when it was made for another decoder or architecture), so a killed run
loses at most one interval. The final head is written with metadata (``matting_head.weights.save_head``).

Each new sample is a pure function of (seed, sample index) (``trainer.seeding.sample_seed``), so ``workers`` CPU
processes can make the crops and canvases ahead of time (useful on a GPU, where the encoder/decoder/head are fast
and the CPU side is not) and the stream is the same for any number of workers and across a resume. ``device``
runs the frozen decoder (TAESD family), the buffer and the head there.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..matting_head.network import MattingHead
from ..matting_head.taps import TapRecorder, tap_spec
from ..matting_head.weights import save_head
from . import checkpoint
from .augment import HEAD_JITTER, degrade, green_canvas, over, random_crop, random_key, spill_and_shadow
from .pairs import Pair
from .schedule import head_warmup, lr_scheduler
from .seeding import chance, randint, sample_generator, sample_seed, uniform

CKPT_KIND = "matting_head"
MIN_CROP, MAX_CROP = 32, 1024  # px; the decoded buffer holds `buffer` crops with their taps in memory
MAX_LR = 1.0  # Adam on this head diverges far below; a larger value is a typo (e.g. 1e30)
SYNTH_FAMILIES = ("shapes", "fine")  # synthetic.synthetic_matte families mixed into the head's samples


class ConfigError(ValueError):
    """A head-training setting is out of range: ``field`` names it (the CLI shows it as ``--field-name``)."""

    def __init__(self, field_name: str, detail: str):
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


def _int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
        raise ConfigError(name, f"expected {rng}, got {v!r}")


def _num(name, v, lo, hi, lo_open=False):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        raise ConfigError(name, f"expected a number {'>' if lo_open else '>='} {lo} and <= {hi}, got {v!r}")


@dataclass
class TrainConfig:
    out: str  # final head file (.safetensors); checkpoints go to <out>.ckpt.safetensors
    steps: int = 4000
    batch: int = 8
    crop: int = 192
    lr: float = 1e-3
    buffer: int = 256
    buffer_init: int = 64
    refresh: int = 1  # new samples per refresh
    refresh_every: int = 1  # steps between refreshes
    synthetic_fraction: float = 0.5
    realistic_fraction: float = 0.5
    noise_fraction: float = 0.5
    noise_max: float = 0.15  # latent noise sigma, relative to the latent's std
    ckpt_every: int = 100
    seed: int = 0
    max_minutes: float = 0.0  # stop (with a checkpoint and a final file) after this long; 0 = no limit
    head_config: dict = field(default_factory=dict)
    init: str = ""  # start from this head file's weights (fine-tuning; its config replaces head_config)
    loss_weights: dict = field(default_factory=dict)  # overrides of LOSS_WEIGHTS
    notes: dict = field(default_factory=dict)  # extra training description for the metadata
    device: str = "cpu"  # where the frozen decoder (TAESD family), the sample buffer and the head run
    workers: int = 0  # CPU processes making samples ahead (0 = in the training process)
    auto_key_fraction: float = 0.5  # samples whose prior is keyed against the estimated key ("auto") not the nominal
    degrade_fraction: float = 0.7  # samples made realistic (spill, shadow) and degraded (noise, JPEG, 4:2:0)

    def __post_init__(self) -> None:
        """Every setting checked up front: ConfigError naming the field and its range."""
        if not isinstance(self.out, str) or not self.out:
            raise ConfigError("out", f"expected a .safetensors file name, got {self.out!r}")
        _int("steps", self.steps, 0)
        _int("batch", self.batch, 1)
        _int("crop", self.crop, MIN_CROP, MAX_CROP)
        if self.crop % 8:
            raise ConfigError("crop", f"expected a multiple of 8 in {MIN_CROP}..{MAX_CROP}, got {self.crop}")
        _num("lr", self.lr, 0.0, MAX_LR, lo_open=True)
        _int("buffer", self.buffer, 1)
        _int("buffer_init", self.buffer_init, 1, self.buffer)
        if self.batch > self.buffer:
            raise ConfigError("batch", f"expected at most --buffer ({self.buffer}) samples, got {self.batch}")
        _int("refresh", self.refresh, 0, self.buffer)
        _int("refresh_every", self.refresh_every, 1)
        for name in ("synthetic_fraction", "realistic_fraction", "noise_fraction", "auto_key_fraction",
                     "degrade_fraction"):
            _num(name, getattr(self, name), 0.0, 1.0)
        _num("noise_max", self.noise_max, 0.0, 10.0)
        _int("ckpt_every", self.ckpt_every, 1)
        _int("seed", self.seed, 0)
        _num("max_minutes", self.max_minutes, 0.0, 1e7)
        _int("workers", self.workers, 0)
        if self.workers > max_workers():  # hostile X7: 100000 forked hundreds of processes and never trained
            raise ConfigError("workers", f"expected at most {max_workers()} sample processes (4 per CPU core of "
                              f"this machine, at most {MAX_WORKERS}), got {self.workers}")
        check_loss_weights(self.loss_weights)


HEAD_IMAGES = ("decoded", "original")


class TaesdBackend:
    """A TAESD-family autoencoder as a training/benchmark backend (images [0,1], latents raw).

    ``head_image``: which image the head reads beside the decoder's taps: "decoded" (the tiny decoder's own output,
    as MattingHeadDecode with that decoder gives it) or "original" (the composite itself, standing in for a full
    VAE's near-lossless decode while the tiny decoder runs beside it on the same latent only for its features: the
    side-decoder set-up of issue 15)."""

    def __init__(self, ae, name: str = "taesd", head_image: str = "decoded"):
        if head_image not in HEAD_IMAGES:
            raise ConfigError("head_image", f"expected one of {', '.join(HEAD_IMAGES)}, got {head_image!r}")
        self.ae = ae
        self.spec = tap_spec(ae.decoder)
        self.name = name
        self.head_image = head_image

    def info(self) -> dict:
        info = {**self.spec.info(), "name": self.name}
        if self.head_image != "decoded":
            info["head_image"] = self.head_image
        return info

    @property
    def device(self) -> torch.device:
        return next(self.ae.parameters()).device

    def to(self, device) -> "TaesdBackend":
        """Move the autoencoder to ``device``; inputs given on another device are moved to it."""
        self.ae.to(device)
        return self

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] in [0,1] -> latent [B,C,H/8,W/8] (raw)."""
        return self.ae.encode(image.to(self.device))

    @torch.no_grad()
    def decode_taps(self, latent: torch.Tensor, transforms=None):
        """latent [B,C,h,w] -> (rgb [B,3,8h,8w] in [0,1], 4 taps [B,C_i,8h/s,8w/s] for s = 8,4,2,1)."""
        with TapRecorder(self.spec.modules, transforms) as rec:
            rgb = self.ae.decode(latent.to(self.device))
        return rgb, rec.take()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B,C,h,w] -> rgb [B,3,8h,8w] in [0,1]."""
        return self.ae.decode(latent.to(self.device))


class ImageBackend:
    """The image-only keyer's "backend": no decoder, the composite is the input (encode and decode are the
    identity, no taps)."""

    name = "image-only"

    def info(self) -> dict:
        from ..matting_head.weights import IMAGE_ONLY_DECODER

        return dict(IMAGE_ONLY_DECODER)

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image

    @torch.no_grad()
    def decode_taps(self, latent: torch.Tensor, transforms=None):
        return latent.clamp(0, 1), []


def make_sample(pairs: list[Pair], cfg: TrainConfig, index: int) -> dict:
    """The CPU part of training sample ``index``, a pure function of (cfg.seed, index): {"fg" [3,s,s] (the ground
    truth colour), "alpha" [1,s,s], "key" [3], "canvas" [3,s,s], "image" [3,s,s] (the composite as a generator or a
    file hands it over: spill, shadow, noise, JPEG / 4:2:0 for ``degrade_fraction`` of the samples)} in [0,1]
    (s = cfg.crop) plus "auto" (whether the prior keys against the estimated key), "noise" (latent noise sigma
    relative to the latent's std, 0 = none) and "noise_seed"."""
    from ..synthetic import synthetic_matte

    g = sample_generator(cfg.seed, index)
    size = cfg.crop
    if not pairs or chance(g, cfg.synthetic_fraction):
        family = SYNTH_FAMILIES[randint(g, 0, len(SYNTH_FAMILIES) - 1)]
        big = int(size * (1 + uniform(g, 0.0, 1.0)))
        fg, a = synthetic_matte(big, randint(g, 0, 2 ** 31 - 2), family)
        fg, a = random_crop(fg, a, size, g, scale=(size / big, 1.0), focus_edges=0.3)
    else:
        p = pairs[randint(g, 0, len(pairs) - 1)]
        fg, a = random_crop(p.fg, p.alpha, size, g, scale=(0.3, 1.0))
    fg = HEAD_JITTER(fg, g)
    key = random_key(g)
    realistic = chance(g, cfg.realistic_fraction)
    canvas = green_canvas(fg.shape[-2], fg.shape[-1], key, realistic, g)
    noisy = chance(g, cfg.noise_fraction)
    noise = cfg.noise_max * uniform(g, 0.0, 1.0)
    auto = chance(g, cfg.auto_key_fraction)
    if chance(g, cfg.degrade_fraction):
        shown, canvas = spill_and_shadow(fg, a, canvas, key, g)
        image = degrade(over(shown, a, canvas), g)
    else:
        image = over(fg, a, canvas)
    return {"fg": fg, "alpha": a, "key": key, "canvas": canvas, "image": image, "auto": auto,
            "noise": noise if noisy else 0.0, "noise_seed": sample_seed(cfg.seed, index, "noise")}


_WORKER = None  # (pairs, cfg) in a sample worker process, inherited through fork


def _worker_init(pairs, cfg):
    global _WORKER
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe
    import cv2

    cv2.setNumThreads(0)  # OpenCV's thread pool does not survive fork (a forked worker hung or died in augment.degrade)
    _WORKER = (pairs, cfg)


def _worker_sample(index: int) -> dict:
    return make_sample(*_WORKER, index)


class SampleMaker:
    """Training samples: CPU crops (inline or from ``cfg.workers`` forked processes, ahead of use) -> green composite
    -> encode -> (noise) -> decode with taps -> the prior alpha (GreenPost or colour difference, keyed against the
    nominal or the estimated key) -> dicts of half-precision tensors on the backend's output device. The prior is
    made once per sample here (it costs more than a training step of the image-only keyer)."""

    def __init__(self, backend, pairs: list[Pair], cfg: TrainConfig, made: int = 0):
        self.backend, self.pairs, self.cfg = backend, pairs, cfg
        self.made = made  # samples handed out so far (the next one's index)
        self.pool = None
        self.pending: deque = deque()
        self.submitted = made
        if cfg.workers > 0:
            # fork: the workers inherit the loaded pairs (no pickling); create before any GPU use in this process
            if "fork" not in multiprocessing.get_all_start_methods():
                raise ConfigError("workers", f"{cfg.workers} sample processes need the 'fork' start method, which "
                                  "this platform lacks (Windows); use 0 workers")
            ctx = multiprocessing.get_context("fork")
            self.pool = ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(pairs, cfg))

    def seek(self, index: int) -> None:
        """Continue the sample stream at ``index`` (after a resume); samples made ahead for other indices are dropped."""
        self.pending.clear()
        self.made = self.submitted = index

    def close(self) -> None:
        if self.pool is not None:
            # let the samples made ahead finish first (at most 10 s in all): terminate() with results still in
            # flight tripped CPython's Pool teardown assertion "Cannot have cache with result_hander not alive"
            # once in CI (tests/unit/test_matting_head_train.py, 2026-12-02)
            deadline = time.monotonic() + 10.0
            for result in self.pending:
                result.wait(max(0.0, deadline - time.monotonic()))
            self.pending.clear()
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def _crops(self, n: int) -> list[dict]:
        if self.pool is None:
            out = [make_sample(self.pairs, self.cfg, self.made + i) for i in range(n)]
        else:
            ahead = n + 4 * self.cfg.workers  # bounded prefetch: results never pile up beyond this
            while len(self.pending) < ahead:
                self.pending.append(self.pool.apply_async(_worker_sample, (self.submitted,)))
                self.submitted += 1
            out = [self.pending.popleft().get() for _ in range(n)]
        self.made += n
        return out

    @torch.no_grad()
    def make(self, n: int, device=None) -> list[dict]:
        """n -> the next n samples: dicts of taps (4, none for the image-only keyer), rgb, prior, alpha, fg, canvas
        (half precision) and key (the one the prior was keyed against)."""
        import warnings

        from ..common.keycolour import NoKeyColourWarning, estimate_key_colours
        from ..matting_head.keyer import prior_alpha

        crops = self._crops(n)
        fg = torch.stack([c["fg"] for c in crops])
        a = torch.stack([c["alpha"] for c in crops])
        canvas = torch.stack([c["canvas"] for c in crops])
        image = torch.stack([c["image"] for c in crops])
        z = self.backend.encode(image)
        for i, c in enumerate(crops):
            if c["noise"] > 0:
                eps = torch.randn(z[i].shape, generator=torch.Generator().manual_seed(c["noise_seed"]))
                z[i] = z[i] + c["noise"] * z[i].std() * eps.to(z)
        rgb, taps = self.backend.decode_taps(z)
        if getattr(self.backend, "head_image", "decoded") == "original":
            rgb = image.to(rgb)  # the head reads the composite itself; the decoder gave only its taps
        device = rgb.device if device is None else device
        kind = self.cfg.head_config.get("prior", "colour_difference")
        auto = [i for i, c in enumerate(crops) if c["auto"]]
        estimated = {}
        if auto:
            with warnings.catch_warnings():  # a crop without a visible screen is a wanted case, not news
                warnings.simplefilter("ignore", NoKeyColourWarning)
                estimated = dict(zip(auto, estimate_key_colours(rgb[auto].float().cpu(), warn=False)))
        used = torch.stack([torch.tensor(estimated[i].rgb) if i in estimated else c["key"].float()
                            for i, c in enumerate(crops)])
        # an estimate goes in as its KeyColour (one that found no screen gives GreenPost's opaque prior)
        prior = torch.cat([prior_alpha(rgb[i : i + 1].float(), [estimated[i]] if i in estimated else
                                       used[i].to(rgb.device), kind) for i in range(len(crops))])
        out = []
        for i, c in enumerate(crops):
            out.append({"taps": [t[i].to(device, torch.half) for t in taps], "rgb": rgb[i].to(device, torch.half),
                        "prior": prior[i].to(device, torch.half),
                        "alpha": a[i].to(device, torch.half), "fg": fg[i].to(device, torch.half),
                        "canvas": canvas[i].to(device, torch.half), "key": used[i].to(device)})
        return out


# ---- the head loss (method.md)

def _band(alpha: torch.Tensor, r: int) -> torch.Tensor:
    """alpha [B,1,H,W] -> transition band [B,1,H,W] in {0,1}: dilate(0 < alpha < 1) by r px."""
    part = ((alpha > 0.01) & (alpha < 0.99)).float()
    return F.max_pool2d(part, 2 * r + 1, 1, r)


def _laplacian_l1(pred, gt, levels=5, weight=None):
    """pred, gt [B,1,H,W] -> L1 of a Laplacian pyramid (2x2 box pyramid, nearest expand) of the error."""
    err = pred - gt
    loss = 0.0
    for i in range(levels):
        if min(err.shape[-2:]) < 2:
            break
        low = F.avg_pool2d(err, 2, ceil_mode=True)
        band = err - F.interpolate(low, size=err.shape[-2:], mode="nearest")
        d = band.abs() if weight is None else band.abs() * weight
        loss = loss + (2 ** i) * d.mean()
        err = low
        weight = None if weight is None else F.max_pool2d(weight, 2, ceil_mode=True)
    return loss / levels


def _grad(x):
    return x[..., 1:, :-1] - x[..., :-1, :-1], x[..., :-1, 1:] - x[..., :-1, :-1]


LOSS_WEIGHTS = {"l1": 1.0, "l2": 4.0, "lap": 1.0, "grad": 0.5, "comp": 1.0, "fg": 0.5}


def max_workers() -> int:
    """The most sample processes ``workers`` may ask for: 4 per CPU core of this machine, at most 256."""
    return max(1, min(MAX_WORKERS, 4 * (os.cpu_count() or 1)))


MAX_WORKERS = 256


def check_loss_weights(weights: dict) -> dict:
    """{term: weight} overrides of LOSS_WEIGHTS -> the same as floats; ValueError for an unknown term, a weight that
    is not finite and >= 0, or overrides that leave every term at 0 (nothing would be learnt; hostile X17)."""
    unknown = sorted(set(weights) - set(LOSS_WEIGHTS))
    if unknown:
        raise ValueError(f"loss weights: unknown term(s) {unknown}; expected some of {sorted(LOSS_WEIGHTS)}")
    out = {k: float(v) for k, v in weights.items()}
    bad = {k: v for k, v in out.items() if not 0 <= v < math.inf}
    if bad:
        raise ValueError(f"loss weights: expected finite weights >= 0, got {bad}")
    if not any(v > 0 for v in {**LOSS_WEIGHTS, **out}.values()):
        raise ValueError("loss weights: every term is 0, so the head would learn nothing; expected at least one "
                         "positive weight")
    return out


def head_loss(out: dict, alpha, fg, canvas, image, weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """out {"alpha" [B,1,H,W], "fg"? [B,3,H,W]}, alpha/fg/canvas/image [B,C,H,W] in [0,1] -> (loss scalar, parts).

    Method.md's head loss: L1 + Laplacian-pyramid L1 + 0.5 Sobel-gradient L1 (band x3) + composition (+ fg L1),
    plus an MSE term; ``weights`` overrides LOSS_WEIGHTS (keys l1, l2, lap, grad, comp, fg)."""
    wt = {**LOSS_WEIGHTS, **(weights or {})}
    pred = out["alpha"]
    w = 1 + 2 * _band(alpha, max(2, alpha.shape[-1] // 50))
    l1 = (w * (pred - alpha).abs()).mean()
    l2 = (w * (pred - alpha) ** 2).mean()
    lap = _laplacian_l1(pred, alpha, 5, w)
    (py, px), (gy, gx) = _grad(pred), _grad(alpha)
    grad = (w[..., :-1, :-1] * ((py - gy).abs() + (px - gx).abs())).mean()
    comp = (over(fg, pred, canvas) - image).abs().mean()
    total = wt["l1"] * l1 + wt["l2"] * l2 + wt["lap"] * lap + wt["grad"] * grad + wt["comp"] * comp
    parts = {"l1": l1.item(), "l2": l2.item(), "lap": lap.item(), "grad": grad.item(), "comp": comp.item()}
    if "fg" in out:
        fgl = (alpha * (out["fg"] - fg).abs()).sum() / alpha.sum().clamp_min(1) / 3
        total = total + wt["fg"] * fgl
        parts["fg"] = fgl.item()
    return total, parts


def batch_from_buffer(buffer: list[dict], idx: list[int], dtype=torch.float32):
    """buffer items, indices -> (4 taps [B,C_i,h,w] channels-last (None for the image-only keyer), rgb, prior,
    alpha, fg, canvas [B,C,H,W], keys [B,3])."""
    s = [buffer[i] for i in idx]
    taps = [torch.stack([x["taps"][k] for x in s]).to(dtype).contiguous(memory_format=torch.channels_last)
            for k in range(len(s[0]["taps"]))] or None
    get = lambda key: torch.stack([x[key] for x in s]).to(dtype)  # noqa: E731
    keys = torch.stack([x["key"] for x in s]).to(dtype)
    return taps, get("rgb"), get("prior"), get("alpha"), get("fg"), get("canvas"), keys


# ---- checkpoints

def ckpt_path(cfg: TrainConfig) -> str:
    """The training checkpoint beside the final head: ``<out without .safetensors>.ckpt.safetensors``."""
    base = cfg.out[: -len(".safetensors")] if cfg.out.endswith(".safetensors") else cfg.out
    return base + ".ckpt.safetensors"


def _decoder_record(info: dict) -> dict:
    rec = {k: info.get(k) for k in ("family", "name", "latent_channels", "taps", "tap_channels", "fingerprint")}
    if info.get("head_image", "decoded") != "decoded":
        rec["head_image"] = info["head_image"]  # only when set: older checkpoints stay resumable
    return rec


# The settings a resumed run must share with its checkpoint: they shape every step (crop, batch, learning rate,
# losses) or the sample stream (seed, buffer, mix). steps (a longer run), ckpt_every, max_minutes, device, workers
# and the notes may change (hostile X8).
RESUME_SETTINGS = ("crop", "batch", "lr", "loss_weights", "seed", "buffer", "refresh", "refresh_every",
                   "synthetic_fraction", "realistic_fraction", "noise_fraction", "noise_max", "auto_key_fraction",
                   "degrade_fraction")


def resume_differences(saved_config: dict, cfg: TrainConfig) -> list[str]:
    """The checkpoint's ``config`` vs this run's -> ``["--crop 64 (now 96)", ...]`` for the settings in
    :data:`RESUME_SETTINGS` that differ (a setting the checkpoint does not record is not compared)."""
    out = []
    for key in RESUME_SETTINGS:
        if key not in saved_config:
            continue
        old, new = saved_config[key], getattr(cfg, key)
        if key == "loss_weights":
            old, new = {**LOSS_WEIGHTS, **(old or {})}, {**LOSS_WEIGHTS, **new}
            if old != new:
                fmt = lambda w: ",".join(f"{k}={w[k]:g}" for k in LOSS_WEIGHTS)  # noqa: E731
                out.append(f"--loss-weights {fmt(old)} (now {fmt(new)})")
            continue
        if old != new:
            out.append(f"--{key.replace('_', '-')} {old} (now {new})")
    return out


def _check_resume(path: str, saved: dict, info: dict, head: MattingHead, cfg: TrainConfig | None = None) -> None:
    hint = "pass --no-resume or delete it (or use another --out)"
    if cfg is not None and isinstance(saved.get("config"), dict):
        diff = resume_differences(saved["config"], cfg)
        if diff:
            raise checkpoint.CheckpointError(
                f"resume: {path} was trained with other settings: {'; '.join(diff)}; rerun with its values to "
                f"resume, or {hint} to start over")
    dec, now = saved.get("decoder") or {}, _decoder_record(info)
    for key, what in (("family", "decoder family"), ("latent_channels", "latent channels"),
                      ("tap_channels", "decoder tap widths"), ("fingerprint", "decoder weights (fingerprint)"),
                      ("head_image", "image the head reads")):
        if dec.get(key) != now.get(key):
            raise checkpoint.CheckpointError(
                f"resume: {path} was made for another decoder ({dec.get('name') or '?'}: {what} {dec.get(key)!r}, "
                f"this run's {now.get('name') or '?'} has {now.get(key)!r}); {hint}")
    if saved.get("head_config") != head.config:
        raise checkpoint.CheckpointError(f"resume: {path} holds a head of another architecture "
                                         f"({saved.get('head_config')} vs {head.config}); {hint}")


def check_device(name: str) -> torch.device:
    """"cpu" / "cuda" / "cuda:N" / "mps" / "auto" -> a usable torch.device; ValueError naming what is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected cpu, cuda, cuda:N, mps or auto, got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch build sees no CUDA GPU (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r}: MPS is not available in this torch build / machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device: expected cpu, cuda, cuda:N, mps or auto, got {name!r}")
    return device


def check_output(cfg: TrainConfig, head: MattingHead) -> None:
    """Up front: ``out`` and its checkpoint are file names (not folders) in a writable folder with room for the
    checkpoints and the final head. ConfigError("out", ...) otherwise."""
    for path in (cfg.out, ckpt_path(cfg)):
        if os.path.isdir(path):
            raise ConfigError("out", f"{path} is a folder; expected a .safetensors file name")
    # checkpoint = weights + two Adam moments (fp32); old and new coexist during a save; the final head in fp16
    need = checkpoint.state_nbytes(head, copies=3) * 2 + checkpoint.state_nbytes(head) // 2 + (1 << 20)
    try:
        checkpoint.check_writable(os.path.dirname(os.path.abspath(cfg.out)), need, "out")
    except ValueError as exc:
        raise ConfigError("out", str(exc)[len("out: "):]) from None


def train_head(backend, pairs: list[Pair], cfg: TrainConfig, resume: bool = True, progress: bool = True,
               monitor=None, log_fn=print) -> str:
    """Train a head for ``backend`` on ``pairs`` (+ synthetic mattes); returns the path of the final head file.

    Everything that can be checked is checked before the first sample is made (settings, device, output folder,
    the checkpoint to resume from). ``monitor(head) -> dict`` (optional) is called at every checkpoint; its
    numbers go into the log."""
    device = check_device(cfg.device)
    info = backend.info()
    init_training = None
    if cfg.init:
        from ..matting_head.weights import check_compatible, load_head

        head, start_info = load_head(cfg.init)
        check_compatible(start_info, info)
        head = head.float().requires_grad_(True)  # load_head gives a frozen inference head
        init_training = {"file": os.path.basename(cfg.init), **(start_info.get("training") or {})}
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(cfg.seed, "init"))
            head = MattingHead(info["tap_channels"], cfg.head_config)
    cfg.head_config = {**cfg.head_config, "prior": head.config["prior"]}  # the samples' prior is the head's
    check_output(cfg, head)
    ckpt = ckpt_path(cfg)
    checkpoint.clean_stale(ckpt)
    checkpoint.clean_stale(cfg.out)
    saved = None
    if resume and os.path.isfile(ckpt):
        saved = checkpoint.load(ckpt, CKPT_KIND, "pass --no-resume or delete it (or use another --out)")
        _check_resume(ckpt, saved.get("info", {}), info, head, cfg)
    # the sample workers fork before this process touches the GPU (a forked child must not inherit a CUDA context)
    maker = SampleMaker(backend, pairs, cfg)
    try:
        return _train(backend, pairs, cfg, head, maker, device, info, init_training, saved, progress, monitor,
                      log_fn)
    finally:
        maker.close()


def _check_weights_finite(head: MattingHead, step: int, ckpt: str) -> None:
    bad = next((n for n, p in head.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ValueError(f"train-head: the head's weights became non-finite by step {step} ({bad!r}); the learning "
                         f"rate is too high for this run. {ckpt} keeps the last good state")


def _train(backend, pairs, cfg, head, maker, device, info, init_training, saved, progress, monitor, log_fn):
    if hasattr(backend, "to"):
        backend.to(device)
    head = head.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    sched = lr_scheduler(opt, cfg.steps, head_warmup(cfg.steps), "cosine", floor=0.05)
    g = sample_generator(cfg.seed, "loop")
    ckpt = ckpt_path(cfg)
    step, elapsed, log = 0, 0.0, []
    if saved is not None:
        meta = checkpoint.restore(saved, model=head, optimizer=opt, scheduler=sched, generators={"loop": g})
        step, elapsed, log = int(meta["step"]), float(meta.get("elapsed", 0.0)), list(meta.get("log", []))
        maker.seek(int(meta["made"]))
        log_fn(f"resumed from {ckpt} at step {step}")

    def save_ckpt():
        _check_weights_finite(head, step, ckpt)
        state = checkpoint.capture(model=head, optimizer=opt, scheduler=sched, generators={"loop": g}, step=step,
                                   made=maker.made, elapsed=time.time() - start, log=log[-200:],
                                   config=asdict(cfg), decoder=_decoder_record(info), head_config=head.config)
        checkpoint.save(ckpt, state, CKPT_KIND)

    buffer: list[dict] = []
    while len(buffer) < cfg.buffer_init:
        buffer += maker.make(min(4 if cfg.workers == 0 else 32, cfg.buffer_init - len(buffer)), device)
    start = time.time() - elapsed
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="train-head", unit="step", dynamic_ncols=True)
    head.train()
    running = None
    stop_reason = "done"
    while step < cfg.steps:
        if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
            stop_reason = "time limit"
            break
        new = maker.make(cfg.refresh, device) if cfg.refresh and step % cfg.refresh_every == 0 else []
        for s in new:
            if len(buffer) < cfg.buffer:
                buffer.append(s)
            else:
                buffer[int(torch.randint(len(buffer), (1,), generator=g))] = s
        idx = torch.randperm(len(buffer), generator=g)[: cfg.batch].tolist()
        taps, rgb, ka, alpha, fg, canvas, keys = batch_from_buffer(buffer, idx)
        image = over(fg, alpha, canvas)
        out = head(taps, rgb, ka, key=keys)
        loss, parts = head_loss(out, alpha, fg, canvas, image, cfg.loss_weights)
        if not torch.isfinite(loss):
            raise ValueError(f"train-head: the loss became {loss.item()} at step {step + 1} (learning rate too "
                             f"high?); {ckpt} keeps the last good state")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        mse = F.mse_loss(out["alpha"].detach(), alpha).item()
        key_mse = F.mse_loss(ka, alpha).item()
        running = (mse, key_mse) if running is None else (0.98 * running[0] + 0.02 * mse,
                                                          0.98 * running[1] + 0.02 * key_mse)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", mse=f"{running[0]:.2e}", key=f"{running[1]:.2e}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            entry = {"step": step, "minutes": round((time.time() - start) / 60, 2), "train_mse": running[0],
                     "train_key_mse": running[1]}
            if monitor is not None:
                head.eval()
                entry.update(monitor(head))
                head.train()
            log.append(entry)
            log_fn(json.dumps(entry))
            save_ckpt()
    if bar is not None:
        bar.close()
    save_ckpt()
    head.eval()
    training = {"steps": step, "planned_steps": cfg.steps, "minutes": round((time.time() - start) / 60, 1),
                "stopped": stop_reason, "crop": cfg.crop, "batch": cfg.batch,
                "subjects": sorted(p.name for p in pairs), "synthetic_fraction": cfg.synthetic_fraction,
                "synthetic_sources": [f"synthetic.synthetic_matte({f})" for f in SYNTH_FAMILIES],
                "noise_max": cfg.noise_max, "device": device.type,
                "data_terms": (f"trained on {len(pairs)} real mattes that carry their sources' terms (the shared "
                               "development mattes: research / non-commercial use only; see the data folder's "
                               "SOURCES files)") if pairs else
                              "synthetic mattes only (the pack's own generator): no third-party data terms",
                **cfg.notes}
    if cfg.loss_weights:
        training["loss_weights"] = {**LOSS_WEIGHTS, **cfg.loss_weights}
    if init_training is not None:
        training["init"] = init_training
    try:
        save_head(cfg.out, head.cpu(), info, training, dtype=torch.float16)
    except OSError as exc:
        raise ConfigError("out", f"could not write {cfg.out}: {exc.strerror or exc}; {ckpt} keeps the trained "
                          "state (rerun to write the head)") from None
    log_fn(f"wrote {cfg.out} ({stop_reason}, step {step})")
    return cfg.out
