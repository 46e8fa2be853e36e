"""The LoRA training loop: joint DiffuMatting loss, mixed precision, gradient accumulation, checkpoints, resume.

Python API: ``train(model_patcher, clip, vae, dataset, options) -> TrainResult`` with ComfyUI objects already in
memory (``MODEL``/``CLIP``/``VAE``, from a checkpoint or built in tests); the CLI (``python -m diffumatting
train``) loads them from a checkpoint file with :func:`comfy_bootstrap.load_checkpoint`.

Each step: green composites -> VAE latents (model space), random timesteps and noise, ``x_t``; the UNet (with
the LoRA hooked in) predicts ``x0_hat`` through ComfyUI's own ``BaseModel.apply_model``, which also runs an
``attn2_patch`` that records the key-colour token's cross-attention with
``green_control.attention.cross_attention_probs`` (the GreenControl node's code) at the chosen levels; the maps
are aggregated with ``green_control.mask.aggregate_attention`` into ``A_g``. Loss: :func:`trainer.losses.joint_loss`.

Reproducibility and resume: every random draw of optimizer step ``s`` (sample order, augmentation, caption
dropout, timesteps, noise) is a function of ``(seed, s)`` (``trainer.seeding``), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would. The learning rate follows torch's ``LambdaLR``
(``trainer.schedule``: linear warm-up, then constant). Checkpoints (``trainer.checkpoint``: LoRA + AdamW +
scheduler + grad scaler + RNG + step, one safetensors file) are written every ``checkpoint_every`` steps
atomically and durably, so a kill loses at most one interval and never leaves a corrupt file; temporary files
of a killed save are removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..common.files import atomic_write_text
from ..green_control.anchor import key_latent
from ..green_control.attention import cross_attention_probs
from ..green_control.mask import aggregate_attention
from ..common.keycolour import KeyColour
from ..green_control.recorder import unet_attn2_lookup
from ..green_control.tokens import clip_inverse_vocab, find_word_positions
from .data import collate
from .losses import LossWeights, abar_from_sigma, joint_loss
from . import checkpoint
from .lora import TARGET_KINDS, LoRANetwork
from .schedule import lr_scheduler
from .seeding import sample_generator, sample_seed

log = logging.getLogger("diffumatting.trainer")

CKPT_DIR = "checkpoints"
CKPT_PREFIX = "step_"
CKPT_KIND = "lora"
LORA_NAME = "diffumatting_green_lora.safetensors"
# Options that must match between a checkpoint and the run that resumes it.
_RESUME_KEYS = ("rank", "alpha", "conv_rank", "targets", "batch_size", "grad_accum", "seed", "attn_levels")


@dataclass
class TrainOptions:
    """Training options (the CLI exposes every one; see ``python -m diffumatting train --help``)."""

    out_dir: str = "out/train"
    steps: int = 1000  # optimizer steps
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    warmup: int = 0  # linear warm-up steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    rank: int = 16
    alpha: float | None = None  # None = rank (scale 1)
    conv_rank: int | None = 8
    targets: tuple = ("attn", "conv")
    weights: LossWeights = field(default_factory=LossWeights)
    attn_levels: tuple = (2, 4)  # record the green token at blocks 1/2 and 1/4 of the latent size
    key_word: str | None = None  # None = the word of the data's key colour ("green")
    t_min: int = 0
    t_max: int = 999
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = True
    lora_name: str = LORA_NAME
    save_dtype: str = "fp16"  # fp16 | bf16 | fp32 for the exported LoRA
    progress: bool = True
    log_every: int = 1

    def __post_init__(self) -> None:
        def pos_int(name, v, minimum=1):
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")

        for name in ("steps", "batch_size", "grad_accum", "rank", "checkpoint_every", "keep_checkpoints", "log_every"):
            pos_int(name, getattr(self, name))
        pos_int("warmup", self.warmup, 0)
        if self.conv_rank is not None:
            pos_int("conv_rank", self.conv_rank)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a finite learning rate > 0, got {self.lr!r}")
        if not self.weight_decay >= 0 or not self.max_grad_norm >= 0:
            raise ValueError("weight_decay/max_grad_norm: expected numbers >= 0")
        self.targets = tuple(self.targets)
        if not self.targets or any(t not in TARGET_KINDS for t in self.targets):
            raise ValueError(f"targets: expected a non-empty subset of {TARGET_KINDS}, got {self.targets!r}")
        self.attn_levels = tuple(int(v) for v in self.attn_levels)
        if not self.attn_levels or any(v < 1 for v in self.attn_levels):
            raise ValueError(f"attn_levels: expected downsampling factors >= 1 (e.g. 2,4), got {self.attn_levels!r}")
        if not 0 <= self.t_min <= self.t_max <= 999:
            raise ValueError(f"t_min/t_max: expected 0 <= t_min <= t_max <= 999, got {self.t_min}, {self.t_max}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision: expected auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.save_dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"save_dtype: expected fp16, bf16 or fp32, got {self.save_dtype!r}")
        if isinstance(self.weights, dict):
            self.weights = LossWeights(**self.weights)
        if not self.lora_name.endswith(".safetensors") or os.sep in self.lora_name:
            raise ValueError(f"lora_name: expected a file name ending in .safetensors, got {self.lora_name!r}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        d["attn_levels"] = list(self.attn_levels)
        return d


@dataclass
class TrainResult:
    lora_path: str
    steps: int  # optimizer steps done in total (including those before a resume)
    resumed_from: int  # 0 when the run started fresh
    history: list  # per-step dicts of loss terms (this process only)
    seconds: float
    skipped_samples: int


# ----------------------------------------------------------------------------------------------------------------
# ComfyUI glue (objects are passed in; only their public attributes are used)


class PromptEncoder:
    """Prompts -> (cond [B,L,D], token positions of the key word per prompt, each prompt's own length).

    Embeddings are cached per prompt (CLIP is frozen). Prompts of different lengths (77 * k tokens) are batched by
    repeating each to the common length, as ComfyUI does; the attention code sums the copies (``cond_len``).
    """

    def __init__(self, clip, word: str):
        self.clip = clip
        self.word = word
        self.vocab = clip_inverse_vocab(clip.tokenizer, "l")
        self.cache: dict[str, tuple[torch.Tensor, list[int] | None]] = {}
        self.missing_word = 0

    def one(self, prompt: str) -> tuple[torch.Tensor, list[int] | None]:
        if prompt not in self.cache:
            tokens = self.clip.tokenize(prompt)
            chunks = tokens.get("l") or next(iter(tokens.values()))
            ids: list[int] | None = None
            if prompt:
                try:
                    ids = find_word_positions(chunks, self.vocab, self.word, last=1)
                except ValueError:
                    self.missing_word += 1
                    log.warning("prompt %r lacks the key-colour word %r: no attention loss for it", prompt, self.word)
            cond = self.clip.encode_from_tokens(tokens)
            self.cache[prompt] = (cond.detach().float().cpu(), ids)
        return self.cache[prompt]

    def batch(self, prompts: list[str]):
        items = [self.one(p) for p in prompts]
        lens = [c.shape[1] for c, _ in items]
        length = math.lcm(*lens)
        conds = [c.repeat(1, length // c.shape[1], 1) for c, _ in items]
        return torch.cat(conds), [ids for _, ids in items], lens


class GreenTrainer:
    """Holds the model, LoRA, optimizer and encoders; :meth:`step` runs one optimizer step."""

    def __init__(self, model_patcher, clip, vae, dataset, options: TrainOptions):
        import comfy.model_management as mm

        self.mm = mm
        self.opts = options
        self.patcher = model_patcher
        self.clip = clip
        self.vae = vae
        self.dataset = dataset
        self.base = model_patcher.model
        unet_cfg = getattr(getattr(self.base, "model_config", None), "unet_config", {}) or {}
        if unet_cfg.get("adm_in_channels") is not None:
            raise ValueError("model: the trainer supports SD1.x/SD2.x-family UNets (no pooled-text 'y' input); "
                             "SDXL-family models are not supported yet")
        self.unet = self.base.diffusion_model
        self.ms = self.base.model_sampling
        self.latent_format = self.base.latent_format
        self._load_unet()
        self.device = model_patcher.load_device
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.lora = LoRANetwork(self.unet, options.rank, options.alpha, options.targets, options.conv_rank,
                                seed=options.seed)
        self.lora.to(self.device, torch.float32)
        self.optimizer = torch.optim.AdamW(self.lora.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        self.scheduler = lr_scheduler(self.optimizer, options.steps, options.warmup, "constant")
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        colour = getattr(dataset, "key_colour", None)
        if not isinstance(colour, KeyColour):  # a dataset without a KeyColour: its key tensor, or pure green
            key = getattr(dataset, "key", torch.tensor([0.0, 1.0, 0.0]))
            colour = KeyColour(tuple(key.float().flatten().tolist()), "rgb")
        self.key_colour = colour
        self.key = colour.tensor()
        self.word = options.key_word or colour.word
        self.prompts = PromptEncoder(clip, self.word)
        self.z_green = key_latent(self.encode_images, self.key_colour)  # [1,C,1,1]: the key colour's latent
        self.step_done = 0

    # -- set-up helpers
    def _load_unet(self) -> None:
        self.mm.load_models_gpu([self.patcher], force_full_load=True)

    def _amp_dtype(self):
        p = self.opts.precision
        dev = self.patcher.load_device
        if p == "fp32" or (p == "auto" and dev.type != "cuda"):
            return None
        if p == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if p == "bf16" else torch.float16

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,H,W] in [0,1] -> latents [B,C,h,w] float32 in model space on the training device."""
        with torch.no_grad():
            lat = self.vae.encode(images.movedim(1, -1).cpu())
            z = self.latent_format.process_in(lat.float())
        if not torch.isfinite(z).all():
            raise ValueError("vae: the encoder produced non-finite latents (broken VAE weights?)")
        return z.to(self.device)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- sampling of the step's data and noise (pure functions of (seed, micro-step))
    def _indices(self, micro: int) -> tuple[list[int], list[int]]:
        n = len(self.dataset)
        b = self.opts.batch_size
        out, epochs = [], []
        for j in range(b):
            pos = micro * b + j
            epoch = pos // n
            perm = torch.randperm(n, generator=sample_generator(self.opts.seed, "order", epoch))
            out.append(int(perm[pos % n]))
            epochs.append(epoch)
        return out, epochs

    def micro_batch(self, micro: int) -> dict:
        idx, epochs = self._indices(micro)
        items = []
        for i, e in zip(idx, epochs):
            self.dataset.epoch = e
            items.append(self.dataset[i])
        return collate(items)

    def noise_seed(self, micro: int) -> int:
        """The seed of micro-batch ``micro``'s timesteps and noise."""
        return sample_seed(self.opts.seed, "noise", micro)

    # -- the loss of one micro-batch
    def losses(self, batch: dict, noise_seed: int) -> dict:
        """batch (collated items), noise_seed (timesteps and noise) -> dict of loss scalars (``loss`` has grad)."""
        z0 = self.encode_images(batch["image"])
        gen = torch.Generator().manual_seed(int(noise_seed))
        t = torch.randint(self.opts.t_min, self.opts.t_max + 1, (z0.shape[0],), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        cond, token_ids, cond_lens = self.prompts.batch(batch["prompt"])
        self._load_unet()  # CLIP/VAE loads may have moved the UNet off the device
        dev = self.device
        b, _, h, w = z0.shape
        noise = noise.to(dev)
        sigma = self.ms.sigma(t.float().to(dev)).float()
        x_t = self.ms.noise_scaling(sigma, noise, z0)
        valid = [bool(batch["has_key_word"][i]) and token_ids[i] is not None for i in range(b)]
        maps: list[list] = [[] for _ in range(b)]
        levels = set(self.opts.attn_levels)
        attn2_of = unet_attn2_lookup(self.unet)
        need_attn = self.opts.weights.green > 0 and self.opts.weights.attn > 0 and any(valid)

        def record(n, context, value, extra):
            shape, orig = extra["activations_shape"], extra["original_shape"]
            if orig[-1] // shape[-1] in levels:
                attn = attn2_of(extra["block"], extra["block_index"])
                for i in range(b):
                    if valid[i]:
                        probs = cross_attention_probs(attn, n[i : i + 1], context[i : i + 1], token_ids[i],
                                                      cond_len=cond_lens[i])
                        maps[i].append((probs, (shape[-2], shape[-1])))
            return n, context, value

        topts = {"patches": {"attn2_patch": [record]}} if need_attn else {}
        with self._autocast():
            x0_hat = self.base.apply_model(x_t, sigma, c_crossattn=cond.to(dev), transformer_options=topts).float()
        eps_hat = (x_t - x0_hat) / sigma.view(-1, 1, 1, 1)
        a_g = None
        if need_attn:
            if not any(maps[i] for i in range(b) if valid[i]):
                raise ValueError(f"attn_levels: no cross-attention block at levels {sorted(levels)} of this UNet")
            rows = [aggregate_attention(maps[i], (h, w)) if valid[i] else torch.zeros(1, 1, h, w, device=dev) for i in range(b)]
            a_g = torch.cat(rows)
        return joint_loss(
            noise, eps_hat, x0_hat, self.z_green.to(dev), batch["bg"].to(dev), batch["band"].to(dev),
            abar_from_sigma(sigma), a_g=a_g, valid=torch.tensor(valid, device=dev), weights=self.opts.weights,
        )

    def step(self) -> dict:
        """One optimizer step (``grad_accum`` micro-batches) -> mean loss terms as floats."""
        s = self.step_done
        self.optimizer.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for a in range(self.opts.grad_accum):
            micro = s * self.opts.grad_accum + a
            batch = self.micro_batch(micro)
            out = self.losses(batch, self.noise_seed(micro))
            loss = out["loss"] / self.opts.grad_accum
            if not torch.isfinite(loss):
                raise ValueError(f"loss: non-finite value at step {s + 1} ({ {k: float(v) for k, v in out.items()} })")
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            for k, v in out.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach()) / self.opts.grad_accum
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.opts.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.lora.parameters(), self.opts.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step_done = s + 1
        acc["step"] = self.step_done
        return acc

    @torch.no_grad()
    def evaluate(self, batch: dict, noise_seed: int = 0) -> dict:
        """Loss terms (floats) on a fixed batch and fixed timesteps/noise, without touching the optimizer."""
        return {k: float(v) for k, v in self.losses(batch, noise_seed).items()}

    # -- checkpoints
    def state(self) -> dict:
        """-> the training state tree (``trainer.checkpoint.capture``): LoRA, AdamW, scheduler, grad scaler, step."""
        return checkpoint.capture(model=self.lora, optimizer=self.optimizer, scheduler=self.scheduler,
                                  scaler=self.scaler, torch_rng=False, step=self.step_done, options=self.opts.to_json())

    def load_state(self, state: dict) -> None:
        """Restore a :meth:`state` tree (strict: every part must fit this trainer)."""
        info = checkpoint.restore(state, model=self.lora, optimizer=self.optimizer, scheduler=self.scheduler,
                                  scaler=self.scaler, torch_rng=False)
        self.step_done = int(info["step"])


def _ckpt_dir(out_dir) -> Path:
    return Path(out_dir) / CKPT_DIR


def list_checkpoints(out_dir) -> list[tuple[int, Path]]:
    """-> [(step, path)] of the complete checkpoints under ``out_dir/checkpoints``, ascending by step."""
    d = _ckpt_dir(out_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.glob(f"{CKPT_PREFIX}*.safetensors"):
        stem = p.name[len(CKPT_PREFIX) : -len(".safetensors")]
        if stem.isdigit():
            out.append((int(stem), p))
    return sorted(out)


def save_checkpoint(trainer: GreenTrainer, out_dir) -> Path:
    """Write ``checkpoints/step_<n>.safetensors`` atomically and durably and prune old ones; -> its path."""
    path = _ckpt_dir(out_dir) / f"{CKPT_PREFIX}{trainer.step_done:08d}.safetensors"
    checkpoint.save(path, trainer.state(), CKPT_KIND)
    for _step, old in list_checkpoints(out_dir)[: -trainer.opts.keep_checkpoints]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def read_checkpoint(path) -> dict:
    """checkpoint file -> its state tree (``info`` holds step and options); CheckpointError (a ValueError) naming
    the file when it is unreadable, foreign or from an older version."""
    return checkpoint.load(path, CKPT_KIND, "pass --no-resume or delete it")


def clean_stale(out_dir) -> int:
    """Remove the temporary files killed checkpoint saves left in ``out_dir/checkpoints`` -> how many."""
    n = 0
    for stale in _ckpt_dir(out_dir).glob(f".{CKPT_PREFIX}*.partial*"):
        with contextlib.suppress(OSError):
            stale.unlink()
            n += 1
    return n


def _try_resume(trainer: GreenTrainer, out_dir) -> int:
    clean_stale(out_dir)  # a run killed while writing leaves a hidden temporary file (never a truncated checkpoint)
    for step, path in reversed(list_checkpoints(out_dir)):
        try:
            state = read_checkpoint(path)
        except checkpoint.CheckpointError as exc:
            if exc.reason != "unreadable":  # an older format or a foreign file: refuse rather than train over it
                raise
            log.warning("%s; trying an older checkpoint", exc)
            continue
        saved = state.get("info", {}).get("options", {})
        now = trainer.opts.to_json()
        diff = [k for k in _RESUME_KEYS if k in saved and saved[k] != now[k]]
        if diff:
            raise ValueError(
                f"resume: the checkpoint {path} was made with different {', '.join(diff)} "
                f"({', '.join(f'{k}={saved[k]!r}' for k in diff)}); use another --out folder or --no-resume"
            )
        try:
            trainer.load_state(state)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"resume: the checkpoint {path} does not fit this run ({str(exc).splitlines()[0]}); "
                             "pass --no-resume or delete it") from None
        log.info("resumed from %s (step %d)", path, step)
        return step
    return 0


def export_lora(trainer: GreenTrainer, path) -> Path:
    """Write the LoRA in ComfyUI's key format (LoraLoader / DiffuMattingLoader), atomically and durably."""
    from safetensors.torch import save

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[trainer.opts.save_dtype]
    sd = trainer.lora.export_state_dict(dtype)
    meta = trainer.lora.metadata()
    meta.update({
        "diffumatting.steps": str(trainer.step_done),
        "diffumatting.key_word": trainer.word,
        "diffumatting.key_colour": json.dumps([round(float(v), 6) for v in trainer.key]),
        "diffumatting.key_colour_label": trainer.key_colour.label,
        "diffumatting.loss_weights": json.dumps(asdict(trainer.opts.weights)),
        "ss_base_model_version": "sd_v1",
    })
    path = Path(path)
    checkpoint.write_bytes_durably(path, save(sd, metadata=meta))
    return path


def _trim_log(path: Path, last_step: int) -> None:
    """Keep only the rows of steps <= ``last_step`` (rows a killed run wrote after its last checkpoint go)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def train(model_patcher, clip, vae, dataset, options: TrainOptions | None = None, on_step=None) -> TrainResult:
    """Train a green-canvas LoRA on ``model_patcher``'s UNet -> :class:`TrainResult` (the LoRA file path, steps).

    ``dataset``: a :class:`trainer.data.GreenDataset` (or anything with ``__len__``, ``__getitem__`` returning its
    items, ``key`` and ``epoch``). Resumes from ``out_dir/checkpoints`` when ``options.resume``. ``on_step(trainer,
    terms)`` is called after every step (tests, custom logging). The UNet is left unmodified (hooks removed).
    """
    opts = options or TrainOptions()
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        trainer = GreenTrainer(model_patcher, clip, vae, dataset, opts)
        trainer.lora.attach()
        try:
            start = _try_resume(trainer, out_dir) if opts.resume else 0
            atomic_write_text(out_dir / "options.json", json.dumps(opts.to_json(), indent=2))
            history = []
            bar = None
            if opts.progress and start < opts.steps:
                from tqdm.auto import tqdm

                bar = tqdm(total=opts.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
            log_path = out_dir / "train_log.jsonl"
            _trim_log(log_path, start)
            while trainer.step_done < opts.steps:
                terms = trainer.step()
                history.append(terms)
                if trainer.step_done % opts.log_every == 0:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in terms.items()}) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{terms[k]:.4f}" for k in ("loss", "ldm", "attn", "canvas", "tb")})
                if on_step is not None:
                    on_step(trainer, terms)
                if trainer.step_done % opts.checkpoint_every == 0 or trainer.step_done == opts.steps:
                    save_checkpoint(trainer, out_dir)
            if bar is not None:
                bar.close()
            lora_path = export_lora(trainer, out_dir / opts.lora_name)
        finally:
            trainer.lora.detach()
    report = getattr(dataset, "report", None)
    if callable(report):
        log.info(report())
    skipped = sum(getattr(dataset, "skipped", {}).values()) if hasattr(dataset, "skipped") else 0
    return TrainResult(str(lora_path), trainer.step_done, start, history, time.perf_counter() - t0, skipped)
