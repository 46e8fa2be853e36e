"""`python -m diffumatting dataset`: key green-screen images on disk into a matting data set (quality-gated,
atomic per sample, resumable): image/ fg/ alpha/ trimap/ caption/ + metadata.jsonl, the layout of SaveMattingDataset.
"""

from __future__ import annotations

import os
import sys

from .. import CLIError, collect_image_files


def register(subparsers) -> None:
    from ...common.keypresets import PRESET_HELP

    p = subparsers.add_parser(
        "dataset", help="key green-screen images into a matting data set (image/ fg/ alpha/ trimap/ metadata.jsonl)",
        description="Key green-screen pictures with GreenPost and write a matting data set: per sample the green "
        "image, straight fg, alpha, trimap, caption and a metadata.jsonl row, every file written atomically. A quality "
        "gate rejects (and counts, in rejected.jsonl) samples with key-colour residue in the foreground, alpha "
        "touching the border, or an almost empty or full alpha. Re-running skips samples already done. An input PNG "
        "with an alpha channel keeps that alpha (e.g. the matting head's); a .txt file beside an image is its caption.")
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="data-set folder (created; resumed if it exists)")
    p.add_argument("--key-colour", default="auto", help=f"'auto', a preset ({PRESET_HELP}), #RRGGBB or R,G,B")
    p.add_argument("--high-quality", action="store_true", help="GreenPost's high-quality mode (two refinement scales)")
    p.add_argument("--alpha-bits", type=int, choices=(8, 16), default=8, help="bit depth of alpha/*.png")
    p.add_argument("--trimap-radius", type=int, default=10, help="unknown band half width in pixels (default 10)")
    p.add_argument("--no-gate", action="store_true", help="keep every sample (scores are still recorded)")
    p.add_argument("--max-key-residue", type=float, default=None, help="gate: largest key-coloured share of the object")
    p.add_argument("--max-border-alpha", type=float, default=None, help="gate: largest share of the border covered")
    p.add_argument("--min-coverage", type=float, default=None, help="gate: smallest mean alpha")
    p.add_argument("--max-coverage", type=float, default=None, help="gate: largest mean alpha")
    p.add_argument("--model", default="", help="model name to record in metadata.jsonl")
    p.set_defaults(func=run)


def sample_name(path: str, used: set[str]) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0]).lstrip("._-") or "sample"
    name, n = stem[:110], 1
    while name in used:
        n += 1
        name = f"{stem[:110]}_{n}"
    used.add(name)
    return name


def run(args) -> int:
    from dataclasses import replace

    from ...common.images import load_image
    from ...common.keycolour import AUTO, parse_key_colour
    from ...dataset import MattingDatasetWriter, QualityThresholds
    from ...greenpost import green_post

    files = collect_image_files(args.inputs)
    key = AUTO
    if args.key_colour.strip().lower() != AUTO:
        try:
            key = parse_key_colour(args.key_colour, name="--key-colour")
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    t = QualityThresholds()
    overrides = {k: v for k, v in (("max_key_residue", args.max_key_residue), ("max_border_alpha", args.max_border_alpha),
                                   ("min_coverage", args.min_coverage), ("max_coverage", args.max_coverage))
                 if v is not None}
    for key, value in overrides.items():
        if not 0.0 <= value <= 1.0:
            raise CLIError(f"--{key.replace('_', '-')}: expected a fraction in [0, 1], got {value}")
    t = replace(t, **overrides)
    try:
        writer = MattingDatasetWriter(args.out, alpha_bits=args.alpha_bits, thresholds=t,
                                      trimap_radius=args.trimap_radius, gate_enabled=not args.no_gate)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    used: set[str] = set()
    done = accepted = rejected = 0
    for path in files:
        name = sample_name(path, used)
        if name in writer:
            done += 1
            continue
        try:
            loaded = load_image(path)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        image = loaded.rgb[None]
        hint = loaded.alpha[None] if loaded.alpha is not None else None
        try:
            res = green_post(image, alpha=hint, key_colour=key, high_quality=args.high_quality)
        except ValueError as exc:
            raise CLIError(f"{path}: {exc}") from None
        caption_file = os.path.splitext(path)[0] + ".txt"
        caption = open(caption_file, encoding="utf-8").read().strip() if os.path.isfile(caption_file) else ""
        meta = {"source": os.path.abspath(path), "prompt": caption, "seed": None, "model": args.model}
        out = writer.write(name, image[0], res.fg[0], res.alpha[0], res.keys[0], caption=caption, meta=meta)
        if out.accepted:
            accepted += 1
        else:
            rejected += 1
            print(f"{path}: rejected ({', '.join(out.reasons)})", file=sys.stderr)
    stats = writer.write_stats()["counts"]
    print(f"{writer.root}: {accepted} accepted, {rejected} rejected now ({done} already done); "
          f"{stats['accepted']} accepted, {stats['rejected']} rejected in total")
    return 0
