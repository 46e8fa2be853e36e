"""Head training on a frozen decoder: green composites -> encode -> (slightly noised) latent -> decode with taps ->
head -> alpha, against the ground truth. Samples are produced into a buffer that is partly refreshed every step
(the frozen encoder/decoder cost far more than the head, so each decoded sample is reused several times).
Checkpoints (head, optimiser, step, RNG) are written atomically every ``ckpt_every`` steps; ``resume`` continues
from the last one, so a killed run loses at most one interval. The final head is written with metadata.

Each new sample is a pure function of (seed, sample index) (``sample_seed``), so ``workers`` CPU processes can make
the crops and canvases ahead of time (useful on a GPU, where the encoder/decoder/head are fast and the CPU side is
not) and the stream is the same for any number of workers and across a resume. ``device`` runs the frozen decoder
(TAESD family), the buffer and the head there."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..common.files import atomic_path
from .data import Pair, composite, green_canvas, jitter_colour, random_crop, random_key
from .network import MattingHead
from .taps import TapRecorder, tap_spec
from .weights import save_head


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


class TaesdBackend:
    """A TAESD-family autoencoder as a training/benchmark backend (images [0,1], latents raw)."""

    def __init__(self, ae, name: str = "taesd"):
        self.ae = ae
        self.spec = tap_spec(ae.decoder)
        self.name = name

    def info(self) -> dict:
        return {**self.spec.info(), "name": self.name}

    @property
    def device(self) -> torch.device:
        return next(self.ae.parameters()).device

    def to(self, device) -> "TaesdBackend":
        """Move the autoencoder to ``device``; inputs given on another device are moved to it."""
        self.ae.to(device)
        return self

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(image.to(self.device))

    @torch.no_grad()
    def decode_taps(self, latent: torch.Tensor, transforms=None):
        with TapRecorder(self.spec.modules, transforms) as rec:
            rgb = self.ae.decode(latent.to(self.device))
        return rgb, rec.take()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.ae.decode(latent.to(self.device))


def _synthetic_source():
    """The project's synthetic_matte if importable and working, else our procedural generator."""
    from .procedural import procedural_matte

    try:
        from ..synthetic import synthetic_matte  # noqa: WPS433
        fg, a = synthetic_matte(64, 0)
        if fg.shape == (3, 64, 64) and a.shape == (1, 64, 64):
            return [synthetic_matte, procedural_matte]
    except Exception:  # the module may not exist yet or be mid-edit; our own generator suffices
        pass
    return [procedural_matte]


def sample_seed(seed: int, index: int) -> int:
    """(run seed, sample index) -> the sample's own RNG seed (a hash: neighbouring indices give unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def make_sample(pairs: list[Pair], cfg: TrainConfig, synth: list, seed: int) -> dict:
    """The CPU part of one training sample, a pure function of ``seed``: {"fg" [3,s,s], "alpha" [1,s,s], "key" [3],
    "canvas" [3,s,s]} in [0,1] (s = cfg.crop) plus "noise" (latent noise sigma relative to the latent's std, 0 = none)
    and "noise_seed"."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.crop
    if not pairs or torch.rand(1, generator=g).item() < cfg.synthetic_fraction:
        fn = synth[int(torch.randint(len(synth), (1,), generator=g))]
        big = int(size * (1 + torch.rand(1, generator=g).item()))
        fg, a = fn(big, int(torch.randint(2 ** 31 - 1, (1,), generator=g)))
        fg, a = random_crop(fg, a, size, g, scale=(size / big, 1.0), focus_edges=0.3)
    else:
        p = pairs[int(torch.randint(len(pairs), (1,), generator=g))]
        fg, a = random_crop(p.fg, p.alpha, size, g, scale=(0.3, 1.0))
    fg = jitter_colour(fg, g)
    key = random_key(g)
    realistic = torch.rand(1, generator=g).item() < cfg.realistic_fraction
    canvas = green_canvas(fg.shape[-2], fg.shape[-1], key, realistic, g)
    noise = cfg.noise_max * torch.rand(1, generator=g).item() if torch.rand(1, generator=g).item() < cfg.noise_fraction \
        else 0.0
    return {"fg": fg, "alpha": a, "key": key, "canvas": canvas, "noise": noise,
            "noise_seed": int(torch.randint(2 ** 62, (1,), generator=g))}


_WORKER = None  # (pairs, cfg, synth) in a sample worker process, inherited through fork


def _worker_init(pairs, cfg, synth):
    global _WORKER
    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe
    _WORKER = (pairs, cfg, synth)


def _worker_sample(seed: int) -> dict:
    return make_sample(*_WORKER, seed)


class SampleMaker:
    """Training samples: CPU crops (inline or from ``cfg.workers`` forked processes, ahead of use) -> green composite
    -> encode -> (noise) -> decode with taps -> dicts of half-precision tensors on the backend's output device."""

    def __init__(self, backend, pairs: list[Pair], cfg: TrainConfig, made: int = 0):
        self.backend, self.pairs, self.cfg = backend, pairs, cfg
        self.synth = _synthetic_source()
        self.made = made  # samples handed out so far (the next one's index)
        self.pool = None
        self.pending: deque = deque()
        self.submitted = made
        if cfg.workers > 0:
            # fork: the workers inherit the loaded pairs (no pickling); create before any GPU use in this process
            if "fork" not in multiprocessing.get_all_start_methods():
                raise ValueError(f"workers: {cfg.workers} sample processes need the 'fork' start method, which this "
                                 "platform lacks (Windows); use 0 workers")
            ctx = multiprocessing.get_context("fork")
            self.pool = ctx.Pool(cfg.workers, initializer=_worker_init, initargs=(pairs, cfg, self.synth))

    def seek(self, index: int) -> None:
        """Continue the sample stream at ``index`` (after a resume); samples made ahead for other indices are dropped."""
        self.pending.clear()
        self.made = self.submitted = index

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def _crops(self, n: int) -> list[dict]:
        seed = self.cfg.seed
        if self.pool is None:
            out = [make_sample(self.pairs, self.cfg, self.synth, sample_seed(seed, self.made + i)) for i in range(n)]
        else:
            ahead = n + 4 * self.cfg.workers  # bounded prefetch: results never pile up beyond this
            while len(self.pending) < ahead:
                self.pending.append(self.pool.apply_async(_worker_sample, (sample_seed(seed, self.submitted),)))
                self.submitted += 1
            out = [self.pending.popleft().get() for _ in range(n)]
        self.made += n
        return out

    @torch.no_grad()
    def make(self, n: int, device=None) -> list[dict]:
        crops = self._crops(n)
        fg = torch.stack([c["fg"] for c in crops])
        a = torch.stack([c["alpha"] for c in crops])
        canvas = torch.stack([c["canvas"] for c in crops])
        image = composite(fg, a, canvas)
        z = self.backend.encode(image)
        for i, c in enumerate(crops):
            if c["noise"] > 0:
                eps = torch.randn(z[i].shape, generator=torch.Generator().manual_seed(c["noise_seed"]))
                z[i] = z[i] + c["noise"] * z[i].std() * eps.to(z)
        rgb, taps = self.backend.decode_taps(z)
        device = rgb.device if device is None else device
        out = []
        for i, c in enumerate(crops):
            out.append({"taps": [t[i].to(device, torch.half) for t in taps], "rgb": rgb[i].to(device, torch.half),
                        "alpha": a[i].to(device, torch.half), "fg": fg[i].to(device, torch.half),
                        "canvas": canvas[i].to(device, torch.half), "key": c["key"].to(device)})
        return out


def _band(alpha: torch.Tensor, r: int) -> torch.Tensor:
    """Transition band: dilate(0 < alpha < 1) by r px -> [B,1,H,W] in {0,1}."""
    part = ((alpha > 0.01) & (alpha < 0.99)).float()
    return F.max_pool2d(part, 2 * r + 1, 1, r)


def _laplacian_l1(pred, gt, levels=5, weight=None):
    """L1 of a Laplacian pyramid (2x2 box pyramid, nearest expand) of the error; cheap on CPU."""
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


def check_loss_weights(weights: dict) -> dict:
    """{term: weight} overrides of LOSS_WEIGHTS -> the same as floats; ValueError for an unknown term or a weight that
    is not finite and >= 0."""
    unknown = sorted(set(weights) - set(LOSS_WEIGHTS))
    if unknown:
        raise ValueError(f"loss weights: unknown term(s) {unknown}; expected some of {sorted(LOSS_WEIGHTS)}")
    out = {k: float(v) for k, v in weights.items()}
    bad = {k: v for k, v in out.items() if not 0 <= v < math.inf}
    if bad:
        raise ValueError(f"loss weights: expected finite weights >= 0, got {bad}")
    return out


def head_loss(out: dict, alpha, fg, canvas, image, weights: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Method.md's head loss: L1 + Laplacian-pyramid L1 + 0.5 Sobel-gradient L1 (band x3) + composition (+ fg L1),
    plus an MSE term; ``weights`` overrides LOSS_WEIGHTS (keys l1, l2, lap, grad, comp, fg)."""
    wt = {**LOSS_WEIGHTS, **(weights or {})}
    pred = out["alpha"]
    w = 1 + 2 * _band(alpha, max(2, alpha.shape[-1] // 50))
    l1 = (w * (pred - alpha).abs()).mean()
    l2 = (w * (pred - alpha) ** 2).mean()
    lap = _laplacian_l1(pred, alpha, 5, w)
    (py, px), (gy, gx) = _grad(pred), _grad(alpha)
    grad = (w[..., :-1, :-1] * ((py - gy).abs() + (px - gx).abs())).mean()
    comp = (pred * fg + (1 - pred) * canvas - image).abs().mean()
    total = wt["l1"] * l1 + wt["l2"] * l2 + wt["lap"] * lap + wt["grad"] * grad + wt["comp"] * comp
    parts = {"l1": l1.item(), "l2": l2.item(), "lap": lap.item(), "grad": grad.item(), "comp": comp.item()}
    if "fg" in out:
        fgl = (alpha * (out["fg"] - fg).abs()).sum() / alpha.sum().clamp_min(1) / 3
        total = total + wt["fg"] * fgl
        parts["fg"] = fgl.item()
    return total, parts


def batch_from_buffer(buffer: list[dict], idx: list[int], dtype=torch.float32):
    s = [buffer[i] for i in idx]
    taps = [torch.stack([x["taps"][k] for x in s]).to(dtype).contiguous(memory_format=torch.channels_last)
            for k in range(4)]
    get = lambda key: torch.stack([x[key] for x in s]).to(dtype)  # noqa: E731
    keys = torch.stack([x["key"] for x in s]).to(dtype)
    return taps, get("rgb"), get("alpha"), get("fg"), get("canvas"), keys


# ---- checkpoints (safetensors: head + Adam moments; JSON metadata: step, config, RNG)

def _ckpt_path(cfg: TrainConfig) -> str:
    base = cfg.out[: -len(".safetensors")] if cfg.out.endswith(".safetensors") else cfg.out
    return base + ".ckpt.safetensors"


def save_checkpoint(path: str, head: MattingHead, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    g: torch.Generator, elapsed: float, log: list, made: int = 0) -> None:
    from safetensors.torch import save_file

    sd = {f"head.{k}": v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    names = {id(p): n for n, p in head.named_parameters()}
    opt_steps = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                n = names[id(p)]
                sd[f"opt.{n}.exp_avg"] = st["exp_avg"].contiguous().cpu()
                sd[f"opt.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous().cpu()
                opt_steps[n] = float(st["step"])
    sd["rng.generator"] = g.get_state()
    meta = {"step": str(step), "config": json.dumps(asdict(cfg)), "opt_steps": json.dumps(opt_steps),
            "elapsed": str(elapsed), "log": json.dumps(log[-200:]), "torch_rng": "1", "made": str(made)}
    sd["rng.torch"] = torch.get_rng_state()
    with atomic_path(path) as tmp:
        save_file(sd, tmp, metadata=meta)


def load_checkpoint(path: str, head: MattingHead, opt: torch.optim.Optimizer, g: torch.Generator):
    """-> (step, elapsed seconds, log, samples made). Raises ValueError for a corrupt or foreign checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"resume: {path} is not a readable checkpoint ({exc})") from exc
    if "step" not in meta:
        raise ValueError(f"resume: {path} is not a head-training checkpoint (no 'step' metadata)")
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    opt_steps = json.loads(meta.get("opt_steps", "{}"))
    for n, p in head.named_parameters():
        if f"opt.{n}.exp_avg" in sd:
            opt.state[p] = {"step": torch.tensor(opt_steps.get(n, 0.0)), "exp_avg": sd[f"opt.{n}.exp_avg"].to(p),
                            "exp_avg_sq": sd[f"opt.{n}.exp_avg_sq"].to(p)}
    g.set_state(sd["rng.generator"])
    torch.set_rng_state(sd["rng.torch"])
    return (int(meta["step"]), float(meta.get("elapsed", 0)), json.loads(meta.get("log", "[]")),
            int(meta.get("made", 0)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    warm = min(200, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


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


def train_head(backend, pairs: list[Pair], cfg: TrainConfig, resume: bool = True, progress: bool = True,
               monitor=None, log_fn=print) -> str:
    """Train a head for ``backend`` on ``pairs`` (+ synthetic mattes); returns the path of the final head file.

    ``monitor(head) -> dict`` (optional) is called at every checkpoint; its numbers go into the log."""
    if cfg.batch > cfg.buffer or cfg.buffer_init > cfg.buffer:
        raise ValueError("batch and buffer_init must not exceed buffer")
    if cfg.workers < 0:
        raise ValueError(f"workers: expected 0 or more processes, got {cfg.workers}")
    check_loss_weights(cfg.loss_weights)
    device = check_device(cfg.device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    info = backend.info()
    init_training = None
    if cfg.init:
        from .weights import check_compatible, load_head

        head, start_info = load_head(cfg.init)
        check_compatible(start_info, info)
        head = head.float().requires_grad_(True)  # load_head gives a frozen inference head
        init_training = {"file": os.path.basename(cfg.init), **(start_info.get("training") or {})}
    else:
        head = MattingHead(info["tap_channels"], cfg.head_config)
    # the sample workers fork before this process touches the GPU (a forked child must not inherit a CUDA context)
    maker = SampleMaker(backend, pairs, cfg)
    try:
        return _train(backend, pairs, cfg, head, maker, g, device, info, init_training, resume, progress, monitor,
                      log_fn)
    finally:
        maker.close()


def _train(backend, pairs, cfg, head, maker, g, device, info, init_training, resume, progress, monitor, log_fn):
    if hasattr(backend, "to"):
        backend.to(device)
    head = head.to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    ckpt = _ckpt_path(cfg)
    step, elapsed, log = 0, 0.0, []
    if resume and os.path.isfile(ckpt):
        step, elapsed, log, made = load_checkpoint(ckpt, head, opt, g)
        maker.seek(made)
        log_fn(f"resumed from {ckpt} at step {step}")
    buffer: list[dict] = []
    while len(buffer) < cfg.buffer_init:
        buffer += maker.make(min(4 if cfg.workers == 0 else 32, cfg.buffer_init - len(buffer)), device)
    start = time.time() - elapsed
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train-head", unit="step", dynamic_ncols=True)
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
        taps, rgb, alpha, fg, canvas, keys = batch_from_buffer(buffer, idx)
        ka = head.prior(rgb, keys)
        image = composite(fg, alpha, canvas)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, cfg)
        out = head(taps, rgb, ka)
        loss, parts = head_loss(out, alpha, fg, canvas, image, cfg.loss_weights)
        if not torch.isfinite(loss):
            raise RuntimeError(f"train-head: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
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
            save_checkpoint(ckpt, head, opt, step, cfg, g, time.time() - start, log, maker.made)
    if bar is not None:
        bar.close()
    save_checkpoint(ckpt, head, opt, step, cfg, g, time.time() - start, log, maker.made)
    head.eval()
    training = {"steps": step, "planned_steps": cfg.steps, "minutes": round((time.time() - start) / 60, 1),
                "stopped": stop_reason, "crop": cfg.crop, "batch": cfg.batch,
                "subjects": sorted(p.name for p in pairs), "synthetic_fraction": cfg.synthetic_fraction,
                "synthetic_sources": [f.__module__ + "." + f.__name__ for f in maker.synth],
                "noise_max": cfg.noise_max, "device": device.type, **cfg.notes}
    if cfg.loss_weights:
        training["loss_weights"] = {**LOSS_WEIGHTS, **cfg.loss_weights}
    if init_training is not None:
        training["init"] = init_training
    save_head(cfg.out, head.cpu(), info, training, dtype=torch.float16)
    log_fn(f"wrote {cfg.out} ({stop_reason}, step {step})")
    return cfg.out


def export_checkpoint(ckpt: str, out: str, decoder_info: dict, training_extra: dict | None = None,
                      dtype: torch.dtype | None = torch.float16) -> str:
    """Write the head weights of a training checkpoint as a head file (e.g. to evaluate a run in progress)."""
    from safetensors import safe_open

    with safe_open(ckpt, framework="pt") as f:
        meta = f.metadata() or {}
        state = {k[5:]: f.get_tensor(k) for k in f.keys() if k.startswith("head.")}
    cfg = json.loads(meta.get("config", "{}"))
    head = MattingHead(decoder_info["tap_channels"], cfg.get("head_config") or {})
    head.load_state_dict(state)
    save_head(out, head, decoder_info, {"steps": int(meta.get("step", 0)), "from_checkpoint": os.path.basename(ckpt),
                                         "subjects": (cfg.get("notes") or {}).get("subjects", []),
                                         "minutes": round(float(meta.get("elapsed", 0)) / 60, 1),
                                         "crop": cfg.get("crop"), "batch": cfg.get("batch"),
                                         "synthetic_fraction": cfg.get("synthetic_fraction"),
                                         "noise_max": cfg.get("noise_max"),
                                         **(cfg.get("notes") or {}), **(training_extra or {})}, dtype=dtype)
    return out
