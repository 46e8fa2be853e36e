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
        "touching the border, or an almost empty or full alpha. Re-running skips the input files already done (by "
        "path). An input PNG with an alpha channel keeps that alpha (e.g. the matting head's) unless it is fully "
        "opaque; a .txt file (UTF-8) beside an image is its caption. One writer per folder: a second run on the same "
        "--out is refused while the first runs.")
    p.add_argument("inputs", nargs="+", help="image files or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="data-set folder (created; resumed if it exists)")
    p.add_argument("--key-colour", default="auto", help=f"'auto', a preset ({PRESET_HELP}), #RRGGBB or R,G,B")
    p.add_argument("--high-quality", action="store_true", help="GreenPost's high-quality mode (two refinement scales)")
    from ...matting_head.refine import add_keyer_arguments

    add_keyer_arguments(p)
    p.add_argument("--alpha-bits", type=int, choices=(8, 16), default=8, help="bit depth of alpha/*.png")
    p.add_argument("--trimap-radius", type=int, default=10,
                   help="unknown band half width in pixels, 0..256 (default 10)")
    p.add_argument("--no-gate", action="store_true", help="keep every sample (scores are still recorded)")
    p.add_argument("--max-key-residue", type=float, default=None, help="gate: largest key-coloured share of the object")
    p.add_argument("--max-border-alpha", type=float, default=None, help="gate: largest share of the border covered")
    p.add_argument("--min-coverage", type=float, default=None, help="gate: smallest mean alpha")
    p.add_argument("--max-coverage", type=float, default=None, help="gate: largest mean alpha")
    p.add_argument("--model", default="", help="model name to record in metadata.jsonl")
    p.set_defaults(func=run)


def sample_name(path: str, used: set[str]) -> str:
    """A file's sanitised stem (letters, digits, ``_.-``), made unique against ``used`` (``_2``, ``_3``...); adds it."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path))[0]).lstrip("._-") or "sample"
    name, n = stem[:110], 1
    while name in used:
        n += 1
        name = f"{stem[:110]}_{n}"
    used.add(name)
    return name


def _source_key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def read_caption(path: str) -> str:
    """The caption beside an image (``<stem>.txt``, UTF-8), or ""; CLIError naming the file if it is unreadable."""
    caption_file = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(caption_file):
        return ""
    try:
        with open(caption_file, encoding="utf-8-sig") as f:
            return f.read().strip()
    except UnicodeDecodeError as exc:
        raise CLIError(f"{caption_file}: the caption file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                       f"offset {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise CLIError(f"{caption_file}: cannot read the caption file: {exc.strerror or exc}") from None


def _thresholds(args):
    from dataclasses import replace

    from ...dataset import MAX_TRIMAP_RADIUS, QualityThresholds

    if not 0 <= args.trimap_radius <= MAX_TRIMAP_RADIUS:
        raise CLIError(f"--trimap-radius: expected 0..{MAX_TRIMAP_RADIUS} pixels, got {args.trimap_radius}")
    overrides = {k: v for k, v in (("max_key_residue", args.max_key_residue), ("max_border_alpha", args.max_border_alpha),
                                   ("min_coverage", args.min_coverage), ("max_coverage", args.max_coverage))
                 if v is not None}
    for name, value in overrides.items():
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise CLIError(f"--{name.replace('_', '-')}: expected a fraction in [0, 1], got {value}")
    t = replace(QualityThresholds(), **overrides)
    if t.min_coverage > t.max_coverage:
        raise CLIError(f"--min-coverage ({t.min_coverage}) must not exceed --max-coverage ({t.max_coverage}): every "
                       "sample would be rejected")
    return t


def run(args) -> int:
    from ...common.images import load_image
    from ...common.keycolour import AUTO, parse_key_colour
    from ...dataset import open_writer
    from ...matting_head.refine import keyer_from_arguments

    # Everything that can be checked is checked before the first image is keyed or the folder is created.
    files = collect_image_files(args.inputs)
    key = AUTO
    if args.key_colour.strip().lower() != AUTO:
        try:
            key = parse_key_colour(args.key_colour, name="--key-colour")
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    thresholds = _thresholds(args)
    try:
        keyer = keyer_from_arguments(args)
    except ValueError as exc:
        raise CLIError(f"--keyer: {exc}") from None
    captions = {path: read_caption(path) for path in files}
    try:
        writer = open_writer(args.out, alpha_bits=args.alpha_bits, thresholds=thresholds,
                             trimap_radius=args.trimap_radius, gate_enabled=not args.no_gate)
    except ValueError as exc:
        raise CLIError(f"--out: {exc}") from None
    try:
        return _run(args, writer, files, captions, key, load_image, keyer)
    finally:
        writer.close()


def _run(args, writer, files, captions, key, load_image, keyer) -> int:
    import warnings

    from ...common.images import frames_note
    from ...common.keycolour import NoKeyColourWarning
    from ...matting_head.refine import key_image

    # Resume by source file: a file already in the data set (accepted or rejected) is skipped, whatever its name;
    # a new file gets a name no sample has yet (two files whose names sanitise alike both get keyed).
    done_sources = {_source_key(row["source"]) for row in writer.rows() if isinstance(row.get("source"), str)}
    used = writer.names
    done = accepted = rejected = failed = 0
    for path in files:
        if _source_key(path) in done_sources:
            done += 1
            continue
        name = sample_name(path, used)
        try:
            loaded = load_image(path)
        except ValueError as exc:  # one bad file does not stop the others (reported, counted, exit status 2)
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        image = loaded.rgb[None]
        hint = None
        if loaded.alpha is not None:
            if float(loaded.alpha.min()) >= 1.0:
                print(f"{path}: its alpha channel is fully opaque (no matte in it), so it is ignored and the picture "
                      "is keyed", file=sys.stderr)
            else:
                hint = loaded.alpha[None]
        if frames_note(loaded):  # hostile X12
            print(f"warning: {path}: {frames_note(loaded)}", file=sys.stderr)
        with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's warning (hostile X14)
            warnings.simplefilter("always", NoKeyColourWarning)
            try:
                res = key_image(image, keyer, alpha=hint, key_colour=key, high_quality=args.high_quality)
            except ValueError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
        said = {str(w.message).split(": ", 1)[-1] for w in caught if issubclass(w.category, NoKeyColourWarning)}
        for note in sorted(said):
            print(f"warning: {path}: {note.replace('pass key_colour', 'pass --key-colour')}", file=sys.stderr)
        caption = captions[path]
        meta = {"source": os.path.abspath(path), "prompt": caption, "seed": None, "model": args.model}
        try:
            out = writer.write(name, image[0], res.fg[0], res.alpha[0], res.keys[0], caption=caption, meta=meta)
        except OSError as exc:
            raise CLIError(f"--out: cannot write sample {name} to {writer.root}: {exc.strerror or exc}") from None
        done_sources.add(_source_key(path))
        if out.accepted:
            accepted += 1
        else:
            rejected += 1
            print(f"{path}: rejected ({', '.join(out.reasons)})", file=sys.stderr)
    try:
        stats = writer.write_stats()["counts"]
    except OSError as exc:
        raise CLIError(f"--out: cannot write {writer.root}/stats.json: {exc.strerror or exc}") from None
    print(f"{writer.root}: {accepted} accepted, {rejected} rejected now ({done} already done); "
          f"{stats['accepted']} accepted, {stats['rejected']} rejected in total")
    if failed:
        raise CLIError(f"{failed} of {len(files)} input(s) could not be read or keyed (see above); the others are in "
                       f"{writer.root}, and a rerun keys only what is missing")
    return 0
