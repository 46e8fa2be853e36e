"""`python -m diffumatting key IN... -o OUTDIR`: key green-screen images into straight-alpha RGBA PNGs (GreenPost)."""

from __future__ import annotations

import os
import sys
import warnings

from .. import CLIError, collect_image_files


def register(subparsers) -> None:
    from ...common.keypresets import PRESET_HELP

    p = subparsers.add_parser(
        "key", help="key green-screen images into RGBA PNGs with straight alpha (GreenPost, no model weights)",
        description="Key images of objects on a green (or any key-colour) canvas with GreenPost and write, per input, "
        "<name>_rgba.png: straight (not premultiplied) RGB + alpha, 1 = opaque. 16-bit inputs give 16-bit outputs. "
        "An input alpha channel is ignored unless --keep-input-alpha. Files are written atomically.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--alpha-only", action="store_true", help="write <name>_alpha.png (grey, 1 = opaque) instead")
    p.add_argument("--key-colour", "--key-color", default="auto",
                   help=f"'auto' (estimated per image), a preset ({PRESET_HELP}; 'green'/'blue' are the chroma "
                   "ones), #RRGGBB or R,G,B")
    p.add_argument("--share-key", action="store_true", help="estimate one key colour for all inputs (video frames)")
    p.add_argument("--high-quality", action="store_true",
                   help="high-quality mode: a second, coarser refinement scale averaged in (a little slower; slightly better on wide soft edges)")
    p.add_argument("--keep-input-alpha", action="store_true",
                   help="an input PNG's own alpha channel is kept as the matte (only the colour is unmixed)")
    p.add_argument("--despill", type=float, default=1.0, help="despill strength 0..1 (default 1)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=None, help="output bit depth (default: the input's)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ...common.images import load_image, save_png
    from ...common.keycolour import AUTO, NoKeyColourWarning, parse_key_colour, resolve_key_colours
    from ...greenpost import green_post

    files = collect_image_files(args.inputs)
    if not 0.0 <= args.despill <= 1.0:
        raise CLIError(f"--despill: expected a value in [0, 1], got {args.despill}")
    auto = args.key_colour.strip().lower() == AUTO
    try:  # the key colour once, before any work
        given_key = None if auto else parse_key_colour(args.key_colour, name="--key-colour")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    os.makedirs(args.out, exist_ok=True)
    shared = None
    if args.share_key and auto:
        frames = []
        for f in files:
            try:
                frames.append(torch.nn.functional.interpolate(load_image(f).rgb[None], size=(128, 128), mode="area"))
            except ValueError:
                pass
        if frames:
            shared = resolve_key_colours(AUTO, torch.cat(frames), share=True)[0]
    failures = 0
    for path in files:
        try:
            img = load_image(path)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failures += 1
            continue
        notes = []
        given = None
        if img.alpha is not None:
            if args.keep_input_alpha:
                given = img.alpha[None]
            elif float(img.alpha.min()) < 1.0:
                notes.append("its alpha channel is ignored (use --keep-input-alpha to keep it)")
        if img.source_mode in ("gray", "gray+alpha"):
            notes.append("greyscale: no key colour, result is opaque")
        key = shared if shared is not None else (given_key or AUTO)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoKeyColourWarning)
            try:
                res = green_post(img.rgb[None], alpha=given, key_colour=key, high_quality=args.high_quality,
                                 despill=args.despill)
            except ValueError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
        for w in caught:
            if issubclass(w.category, NoKeyColourWarning) and img.source_mode not in ("gray", "gray+alpha"):
                notes.append(str(w.message).split(": ", 1)[-1])
        bits = args.bits or img.bit_depth
        stem = os.path.splitext(os.path.basename(path))[0]
        if args.alpha_only:
            out = os.path.join(args.out, f"{stem}_alpha.png")
            save_png(out, None, res.alpha[0], bits=bits)
        else:
            out = os.path.join(args.out, f"{stem}_rgba.png")
            save_png(out, res.fg[0], res.alpha[0], bits=bits)
        used = res.keys[0]
        line = f"{path} -> {out}  (key {used.label})" if used.found else f"{path} -> {out}  (no key colour found)"
        print(line + "".join(f"\n  warning: {n}" for n in notes))
    if failures:
        raise CLIError(f"{failures} of {len(files)} input(s) could not be keyed (see above)")
    return 0
