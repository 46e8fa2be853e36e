"""`python -m diffumatting train`: fine-tune a green-canvas LoRA on an SD1.x checkpoint with the DiffuMatting losses.

Loads the checkpoint with ComfyUI's own model code (``--comfyui`` or ``$COMFYUI_PATH``), builds Green100K-style
composites from ``--data``, trains a LoRA on the UNet's attention and conv layers with the joint loss and writes
``<out>/diffumatting_green_lora.safetensors`` (ComfyUI LoraLoader key format). Checkpoints go to
``<out>/checkpoints``; running the same command again resumes from the newest one.
"""

from __future__ import annotations

import argparse

from .. import CLIError


def _csv_ints(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _csv(text: str) -> tuple:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _range(text: str) -> tuple:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    return (lo, hi)


def register(subparsers) -> None:
    from ...common.keypresets import PRESET_HELP

    p = subparsers.add_parser(
        "train",
        help="train a green-canvas LoRA (DiffuMatting losses) on an SD1.x checkpoint",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--checkpoint", required=True, help="SD1.x checkpoint file (.safetensors/.ckpt) to fine-tune")
    io.add_argument("--data", required=True, nargs="+",
                    help="data folder(s) of (fg|image, alpha[, caption]) pairs: <name>/image.png + alpha.png "
                         "(+ caption.txt), or fg/ (or image/) + alpha/ (+ caption/) folders with matching names")
    io.add_argument("--out", required=True, help="output folder: LoRA, checkpoints/, train_log.jsonl, options.json")
    io.add_argument("--comfyui", default=None, help="ComfyUI folder (default: $COMFYUI_PATH)")
    io.add_argument("--cpu", action="store_true", help="force ComfyUI's CPU mode")
    io.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="add N procedural synthetic mattes (synthetic/) to the data")
    io.add_argument("--lora-name", default="diffumatting_green_lora.safetensors", help="file name of the final LoRA")
    io.add_argument("--save-dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="dtype of the final LoRA")

    tr = p.add_argument_group("optimisation")
    tr.add_argument("--steps", type=int, default=1000, help="optimizer steps in total (a resumed run counts on)")
    tr.add_argument("--batch-size", type=int, default=1, help="samples per micro-batch")
    tr.add_argument("--grad-accum", type=int, default=1, help="micro-batches accumulated per optimizer step")
    tr.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    tr.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    tr.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    tr.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0 = off)")
    tr.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                    help="autocast dtype; auto = bf16 (or fp16 with loss scaling) on CUDA, fp32 elsewhere")
    tr.add_argument("--seed", type=int, default=0, help="seed of sample order, augmentation, timesteps and noise")
    tr.add_argument("--t-range", type=_csv_ints, default=(0, 999), metavar="MIN,MAX", help="training timesteps")

    lo = p.add_argument_group("LoRA")
    lo.add_argument("--rank", type=int, default=16, help="rank of the attention LoRA layers")
    lo.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: = rank, scale 1)")
    lo.add_argument("--conv-rank", type=int, default=8, help="rank of the conv LoRA layers")
    lo.add_argument("--targets", type=_csv, default=("attn", "conv"),
                    help="layer kinds: attn (to_q/k/v/out), conv (all Conv2d), ff (feed-forward), proj (Linear proj_in/out)")

    ls = p.add_argument_group("losses (L = L_ldm + green * (attn * L_attn + canvas * L_canvas) + tb * L_tb)")
    ls.add_argument("--w-green", type=float, default=0.5, help="weight of the green-background control loss")
    ls.add_argument("--w-attn", type=float, default=1.0, help="weight of its attention form inside L_green")
    ls.add_argument("--w-canvas", type=float, default=1.0, help="weight of its canvas (x0) form inside L_green")
    ls.add_argument("--w-tb", type=float, default=1.0, help="weight of the transition-boundary loss")
    ls.add_argument("--attn-levels", type=_csv_ints, default=(2, 4),
                    help="record the key word's cross-attention at blocks this many times smaller than the latent")
    ls.add_argument("--key-word", default=None, help="the prompt word of the key colour (default: from --key-colour)")

    da = p.add_argument_group("data")
    da.add_argument("--resolution", type=int, default=512, help="square training size in pixels (multiple of 8)")
    da.add_argument("--key-colour", default="green",
                    help=f"canvas colour: a preset ({PRESET_HELP}; 'green' = chroma_green), #RRGGBB or R,G,B")
    da.add_argument("--scale", type=_range, default=(0.5, 0.95), metavar="MIN,MAX",
                    help="subject's longer side as a fraction of the canvas")
    da.add_argument("--hflip", type=float, default=0.5, help="probability of a horizontal flip")
    da.add_argument("--vflip", type=float, default=0.0, help="probability of a vertical flip")
    da.add_argument("--jitter", type=float, default=0.1, help="colour-jitter strength (0 = off)")
    da.add_argument("--caption-suffix", default=None,
                    help="appended to every caption; must name the key colour (default: 'isolated on a plain "
                         "<colour word> screen background', the colour word of --key-colour)")
    da.add_argument("--caption-dropout", type=float, default=0.1, help="probability of an empty caption")
    da.add_argument("--default-caption", default="an object", help="caption when neither a sidecar nor a folder name gives one")
    da.add_argument("--band-radius", type=int, default=None, help="transition-band dilation in px (default 10 at 512, scaled)")

    ck = p.add_argument_group("checkpoints and progress")
    ck.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (a kill loses at most this many)")
    ck.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (older ones are deleted)")
    ck.add_argument("--no-resume", action="store_true", help="start fresh even if <out>/checkpoints has checkpoints")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar")
    ck.add_argument("--log-every", type=int, default=1, help="steps between rows of train_log.jsonl")
    p.set_defaults(func=run)


def build_dataset(args):
    """args -> a GreenDataset over every --data folder (+ --synthetic samples)."""
    from ...common.keycolour import parse_key_colour
    from ...synthetic import synthetic_matte
    from ...green_control.prompt import DEFAULT_SUFFIX, key_suffix, names_word
    from ...trainer.data import DataOptions, GreenDataset, scan_folder

    try:
        key = parse_key_colour(args.key_colour, "--key-colour")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.synthetic < 0:
        raise CLIError(f"--synthetic: expected 0 or more synthetic mattes, got {args.synthetic}")
    if args.band_radius is not None and args.band_radius < 0:
        raise CLIError(f"--band-radius: expected 0 or more pixels, got {args.band_radius}")
    suffix = args.caption_suffix
    word = args.key_word or key.word
    if suffix is None:
        suffix = key_suffix(DEFAULT_SUFFIX, word)
    elif args.w_green > 0 and args.w_attn > 0 and not names_word(suffix, word):
        raise CLIError(f"--caption-suffix: {suffix!r} does not name the key colour word {word!r}; the attention "
                       f"loss needs it in every prompt (e.g. {key_suffix(DEFAULT_SUFFIX, word)!r}), or "
                       "set --key-word, or turn that loss off with --w-attn 0")
    opts = DataOptions(
        resolution=args.resolution, key_colour=key, scale=tuple(args.scale), hflip=args.hflip, vflip=args.vflip,
        jitter=args.jitter, caption_suffix=suffix, caption_dropout=args.caption_dropout,
        default_caption=args.default_caption, band_radius=args.band_radius,
    )
    sources: list = []
    for folder in args.data:
        sources.extend(scan_folder(folder))
    for i in range(args.synthetic):
        fg, alpha = synthetic_matte(min(args.resolution, 512), 1_000_000 + i)
        sources.append((fg, alpha, args.default_caption))
    return GreenDataset(sources, opts, seed=args.seed)


def build_options(args):
    from ...trainer.losses import LossWeights
    from ...trainer.loop import TrainOptions

    if len(args.t_range) != 2:
        raise CLIError(f"--t-range: expected MIN,MAX, got {args.t_range!r}")
    return TrainOptions(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup=args.warmup, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, rank=args.rank,
        alpha=args.alpha, conv_rank=args.conv_rank, targets=tuple(args.targets),
        weights=LossWeights(green=args.w_green, attn=args.w_attn, canvas=args.w_canvas, tb=args.w_tb),
        attn_levels=tuple(args.attn_levels), key_word=args.key_word, t_min=args.t_range[0], t_max=args.t_range[1],
        precision=args.precision, seed=args.seed, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=not args.no_resume, lora_name=args.lora_name,
        save_dtype=args.save_dtype, progress=not args.no_progress, log_every=args.log_every,
    )


def run(args) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import os

    if not os.path.isfile(args.checkpoint):
        raise CLIError(f"--checkpoint: {args.checkpoint} is not a file")
    try:
        options = build_options(args)
        dataset = build_dataset(args)
        from ...trainer.checkpoint import check_writable

        check_writable(args.out, 0, "--out")  # a file, read-only or unreachable --out fails before the model loads
        from ...comfy_bootstrap import load_checkpoint
        from ...trainer.loop import train

        model, clip, vae = load_checkpoint(args.checkpoint, args.comfyui, cpu=args.cpu or None, what="--checkpoint")
        result = train(model, clip, vae, dataset, options)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"LoRA: {result.lora_path}")
    print(f"steps: {result.steps} (resumed from {result.resumed_from}); {result.seconds:.1f} s; "
          f"skipped samples: {result.skipped_samples}")
    return 0
