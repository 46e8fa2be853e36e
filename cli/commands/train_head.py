"""`python -m diffumatting train-head`: train a matting head on a frozen decoder (TAESD family or ComfyUI's VAE), or
the image-only keyer (``--image-only``: no decoder; the model GreenPost's learned mode runs)."""

from __future__ import annotations

import os

from .. import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-head", help="train a matting head on a frozen VAE decoder, or the image-only keyer (--image-only)",
        description="Train the matting head on a frozen decoder from (fg or image, alpha) pairs composited onto "
        "green (plus synthetic mattes), with slightly noised latents. Writes periodic checkpoints beside --out "
        "(<out>.ckpt.safetensors) and resumes from them; the final head is a safetensors file with metadata.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--taesd", metavar="PATH", help="TAESD-family folder (*_encoder/*_decoder.safetensors), e.g. "
                     "../shared/data/models/taef2")
    src.add_argument("--vae", metavar="FILE", help="a VAE or checkpoint file loaded with ComfyUI (needs COMFYUI_PATH)")
    src.add_argument("--image-only", action="store_true",
                     help="train the image-only keyer (the model of GreenPost's learned mode): no decoder, the "
                     "composite itself is the input; its default size is matting_head.network.IMAGE_CONFIG")
    p.add_argument("--data", action="append", default=[], metavar="DIR",
                   help="folder of <subject>/alpha.png + fg.png|image.png (or alpha/ + fg/ folders); repeatable")
    p.add_argument("--holdout", default="", help="comma-separated subjects to leave out of training (monitored)")
    p.add_argument("--fold", default="", metavar="I/K",
                   help="cross-validation: leave out fold I of K (0-based; the subjects of all --data folders sorted "
                   "by name, every K-th from the I-th), e.g. 0/5 ... 4/5; combines with --holdout")
    p.add_argument("--synthetic-only", action="store_true", help="train on synthetic mattes only")
    p.add_argument("--out", required=True, help="final head file (.safetensors)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=192, help="training crop size in px (a multiple of 8, 32 to 1024)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate (> 0, at most 1; warm-up then "
                   "cosine decay)")
    p.add_argument("--buffer", type=int, default=256, help="decoded samples kept in memory")
    p.add_argument("--refresh", type=int, default=1, help="new decoded samples per refresh")
    p.add_argument("--refresh-every", type=int, default=1, help="steps between refreshes")
    p.add_argument("--synthetic-fraction", type=float, default=0.5)
    p.add_argument("--ckpt-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0 = no limit)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--device", default="cpu",
                   help="where the TAESD-family decoder, the sample buffer and the head run: cpu, cuda, cuda:N, mps "
                   "or auto (cuda when available). With --vae, ComfyUI places the VAE itself")
    p.add_argument("--workers", type=int, default=0,
                   help="CPU processes that make training crops ahead of use (0 = none; on a GPU the crops are the "
                   "bottleneck: use about the number of CPU cores). The samples are the same for any number")
    p.add_argument("--prior", choices=("greenpost", "colour_difference"), default="greenpost",
                   help="the key alpha the head learns to correct: GreenPost's alpha of the decoded image (default; "
                   "the head then starts as good as GreenPost) or a plain colour-difference key (no GreenPost "
                   "dependency)")
    p.add_argument("--init", default="", metavar="HEAD",
                   help="start from this head file (fine-tune it, e.g. on your own mattes); its architecture and "
                   "prior are kept, --prior is ignored")
    p.add_argument("--loss-weights", default="", metavar="TERM=W,...",
                   help="override loss weights, e.g. l2=16,grad=0 (terms: l1, l2 (MSE), lap, grad, comp, fg)")
    p.add_argument("--head-image", choices=("decoded", "original"), default="decoded",
                   help="with --taesd: the image the head reads beside the decoder's features: the tiny decoder's "
                   "own output (default) or the original composite (the side-decoder experiment: a full VAE's "
                   "near-lossless decode stood in by the composite, the tiny decoder run only for its features)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-monitor", action="store_true", help="do not evaluate the held-out subjects at checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _comfy_backend(path: str):
    import torch

    from ...comfy_bootstrap import load_vae
    from ...matting_head.taps import TapRecorder, tap_spec

    try:
        vae = load_vae(path, what="--vae")
    except ValueError as exc:
        raise CLIError(str(exc)) from None

    class ComfyBackend:
        def __init__(self):
            self.spec = tap_spec(vae.first_stage_model)

        def info(self):
            return {**self.spec.info(), "name": os.path.basename(path)}

        @torch.no_grad()
        def encode(self, image):
            return vae.encode(image.movedim(1, -1)).float()

        @torch.no_grad()
        def decode_taps(self, latent, transforms=None):
            with TapRecorder(self.spec.modules, transforms) as rec:
                out = vae.first_stage_model.decode(latent.to(vae.vae_dtype).to(vae.device))
                rgb = vae.process_output(out).float().cpu()
            return rgb, [t.float().cpu() for t in rec.take()]

    return ComfyBackend()


def _loss_weights(text: str) -> dict:
    """"l2=16,grad=0" -> {"l2": 16.0, "grad": 0.0}; a clear CLIError for anything else."""
    from ...trainer.head import LOSS_WEIGHTS, check_loss_weights

    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--loss-weights: expected TERM=WEIGHT with TERM one of {', '.join(LOSS_WEIGHTS)} and "
                           f"a number, got {item!r}") from None
    try:
        return check_loss_weights(out)
    except ValueError as exc:
        raise CLIError(f"--loss-weights: {exc}") from exc


def parse_fold(text: str) -> tuple[int, int] | None:
    """"I/K" -> (I, K) with 0 <= I < K, K >= 2; "" -> None; CLIError naming --fold otherwise."""
    if not text:
        return None
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise CLIError(f"--fold: expected I/K (e.g. 0/5), got {text!r}") from None
    if k < 2 or not 0 <= i < k:
        raise CLIError(f"--fold: expected 0 <= I < K and K >= 2, got {text!r}")
    return i, k


def fold_subjects(names: list[str], fold: tuple[int, int]) -> list[str]:
    """Subject names, (I, K) -> the names of fold I: every K-th of the sorted names from the I-th."""
    i, k = fold
    return sorted(names)[i::k]


def _flag(exc) -> str:
    """A ConfigError of the head trainer -> its message with the field as a command-line flag."""
    return f"--{exc.field.replace('_', '-')}: {exc.detail}"


def run(args) -> int:
    import torch

    from ...matting_head.network import IMAGE_CONFIG
    from ...matting_head.taesd import load_tiny_autoencoder
    from ...trainer.checkpoint import check_writable
    from ...trainer.head import ConfigError, ImageBackend, TaesdBackend, TrainConfig, check_device, train_head
    from ...trainer.head_eval import make_monitor, prepare_eval
    from ...trainer.pairs import load_pairs

    if not args.out.endswith(".safetensors"):
        raise CLIError("--out: expected a .safetensors file name")
    if os.path.isdir(args.out):
        raise CLIError(f"--out: {args.out} is a folder; expected a .safetensors file name")
    if args.threads < 0:
        raise CLIError(f"--threads: expected 0 (torch's default) or more threads, got {args.threads}")
    loss_weights = _loss_weights(args.loss_weights)
    try:
        check_device(args.device)
    except ValueError as exc:
        raise CLIError(f"--{exc}") from exc  # the message starts with "device"
    if args.init and not os.path.isfile(args.init):
        raise CLIError(f"--init: {args.init} does not exist")
    if args.head_image != "decoded" and not args.taesd:
        raise CLIError("--head-image: only with --taesd (the image-only keyer reads the image anyway; --vae decodes "
                       "with the full VAE)")
    holdout = [s for s in args.holdout.split(",") if s]
    fold = parse_fold(args.fold)
    if fold is not None and not args.data:
        raise CLIError("--fold: needs --data (the subjects to split)")
    try:  # every setting is checked before any model or data is loaded
        cfg = TrainConfig(out=args.out, steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr,
                          buffer=args.buffer, buffer_init=min(args.buffer, max(args.batch, 64)),
                          refresh=args.refresh, refresh_every=args.refresh_every,
                          synthetic_fraction=args.synthetic_fraction, ckpt_every=args.ckpt_every, seed=args.seed,
                          max_minutes=args.max_minutes, init=args.init,
                          head_config={**IMAGE_CONFIG, "prior": args.prior} if args.image_only else {"prior": args.prior},
                          loss_weights=loss_weights, device=args.device, workers=args.workers,
                          notes={"holdout": holdout, "fold": args.fold,
                                 "data": [os.path.basename(os.path.abspath(d)) for d in args.data]})
    except ConfigError as exc:
        raise CLIError(_flag(exc)) from None
    try:
        check_writable(os.path.dirname(os.path.abspath(args.out)), 0, "--out")  # again with sizes before training
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.image_only:
            backend = ImageBackend()
        elif args.taesd:
            ae = load_tiny_autoencoder(args.taesd)
            if ae.encoder is None:
                raise CLIError(f"--taesd: {args.taesd} has no encoder weights (training needs both halves)")
            backend = TaesdBackend(ae, name=ae.name, head_image=args.head_image)
        else:
            backend = _comfy_backend(args.vae)
        loaded = [p for d in args.data for p in load_pairs(d)]
        if fold is not None:
            holdout = sorted(set(holdout) | set(fold_subjects([p.name for p in loaded], fold)))
            cfg.notes["holdout"] = holdout
        pairs, held = [], []
        for p in loaded:
            (held if p.name in holdout else pairs).append(p)
        missing = sorted(set(holdout) - {p.name for p in held})
        if missing:
            raise CLIError(f"--holdout: subjects {missing} not found in --data")
        if args.synthetic_only:
            pairs = []
        if not pairs and args.synthetic_fraction <= 0:
            raise CLIError("no training pairs: give --data or a positive --synthetic-fraction")
        if not pairs:
            cfg.synthetic_fraction = 1.0
        monitor = make_monitor(prepare_eval(backend, held)) if held and not args.no_monitor else None
        train_head(backend, pairs, cfg, resume=not args.no_resume, progress=not args.no_progress, monitor=monitor,
                   log_fn=lambda line: print(line, flush=True))
    except ConfigError as exc:
        raise CLIError(_flag(exc)) from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:  # a write the up-front checks could not foresee (the disk filled up during the run)
        raise CLIError(f"{exc.filename or '--out'}: {exc.strerror or exc}") from None
    return 0
