"""`python -m diffumatting key IN... -o OUTDIR`: key green-screen images into straight-alpha RGBA PNGs (GreenPost)."""

from __future__ import annotations

import os
import sys
import warnings

from .. import CLIError, collect_image_files


def register(subparsers) -> None:
    from ...common.keypresets import PRESET_HELP
    from ...matting_head.refine import add_keyer_arguments

    p = subparsers.add_parser(
        "key", help="key green-screen images into RGBA PNGs with straight alpha (GreenPost; --learned adds the bundled learned keyer)",
        description="Key images of objects on a green (or any key-colour) canvas with GreenPost (--learned: refined by the bundled learned keyer), and write, per input, "
        "<name>_rgba.png: straight (not premultiplied) RGB + alpha, 1 = opaque. 16-bit inputs give 16-bit outputs. "
        "An input alpha channel is ignored unless --keep-input-alpha. Inputs that share a name (a.jpg, a.png) get the "
        "extension in theirs (a_jpg_rgba.png, a_png_rgba.png). 'auto' recognises green, blue and magenta screens; an "
        "image without one is written opaque with a warning. Files are written atomically; an image larger than the "
        "free memory allows (about 6 Mpx per GB) is refused with the limit named.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created)")
    p.add_argument("--alpha-only", action="store_true", help="write <name>_alpha.png (grey, 1 = opaque) instead")
    p.add_argument("--key-colour", "--key-color", default="auto",
                   help=f"'auto' (estimated per image), a preset ({PRESET_HELP}; 'green'/'blue' are the chroma "
                   "ones), #RRGGBB or R,G,B")
    p.add_argument("--share-key", action="store_true", help="estimate one key colour for all inputs (video frames)")
    p.add_argument("--high-quality", action="store_true",
                   help="high-quality mode: a second, coarser refinement scale averaged in (a little slower; slightly better on wide soft edges)")
    add_keyer_arguments(p)
    p.add_argument("--keep-input-alpha", action="store_true",
                   help="an input PNG's own alpha channel is kept as the matte (only the colour is unmixed)")
    p.add_argument("--despill", type=float, default=1.0, help="despill strength 0..1 (default 1)")
    p.add_argument("--bits", type=int, choices=(8, 16), default=None, help="output bit depth (default: the input's)")
    p.set_defaults(func=run)


LOAD_BYTES_PER_PIXEL = 24  # the decoded file and its float32 copy, on top of the keying's own working memory


def memory_limit() -> tuple[int | None, str]:
    """-> (the most pixels one image may have to be loaded and keyed now, the reason for the limit in words)."""
    from ...greenpost.core import KEYING_BYTES_PER_PIXEL, memory_limit as keying_memory

    room, why = keying_memory("cpu")  # free memory, or the address space left under `ulimit -v` when smaller
    if room is None:
        return None, ""
    per_px = KEYING_BYTES_PER_PIXEL + LOAD_BYTES_PER_PIXEL
    return room // per_px, f" that {why} allows for keying (about {per_px} bytes per pixel); downscale or crop it"


def output_names(files: list[str], suffix: str) -> list[str]:
    """Input paths -> one output file name each, ``<stem><suffix>``; inputs whose stems collide (also by case only,
    for case-insensitive file systems) get their extension in the name, and any name still taken a counter."""
    from collections import Counter

    stems = [os.path.splitext(os.path.basename(f)) for f in files]
    counts = Counter(stem.casefold() for stem, _ in stems)
    names = [f"{stem}_{ext.lstrip('.').lower()}" if counts[stem.casefold()] > 1 and ext else stem for stem, ext in stems]
    taken: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 2
        while candidate.casefold() in taken:
            candidate, n = f"{name}_{n}", n + 1
        taken.add(candidate.casefold())
        out.append(candidate + suffix)
    return out


OWN_SUFFIXES = ("_rgba.png", "_alpha.png")


def skip_own_outputs(files: list[str], inputs: list[str], out_dir: str) -> list[str]:
    """Drop this command's own outputs (``*_rgba.png``, ``*_alpha.png``) that a folder input contributed when that
    folder is the output folder, with a note (hostile X11: a rerun of ``key io -o io`` would key them again). Files
    named on the command line are always kept."""
    out_real = os.path.realpath(out_dir)
    named = {os.path.realpath(i) for i in inputs if not os.path.isdir(i)}
    kept, skipped = [], []
    for f in files:
        real = os.path.realpath(f)
        if (real not in named and os.path.dirname(real) == out_real
                and os.path.basename(f).lower().endswith(OWN_SUFFIXES)):
            skipped.append(f)
        else:
            kept.append(f)
    if skipped:
        print(f"note: skipped {len(skipped)} file(s) named *_rgba.png / *_alpha.png in the output folder {out_dir} "
              "(this command's own outputs; name a file to key it anyway)")
        if not kept:
            raise CLIError(f"nothing to key: every image in {out_dir} is an output of an earlier run")
    return kept


def run(args) -> int:
    import torch

    from ...common.files import os_error_text, prepare_output_dir
    from ...common.images import frames_note, load_image, save_png
    from ...common.keycolour import AUTO, NoKeyColourWarning, parse_key_colour, resolve_key_colours
    from ...matting_head.refine import key_image, keyer_from_arguments

    files = collect_image_files(args.inputs)
    if not 0.0 <= args.despill <= 1.0:
        raise CLIError(f"--despill: expected a value in [0, 1], got {args.despill}")
    auto = args.key_colour.strip().lower() == AUTO
    try:
        keyer = keyer_from_arguments(args)
    except ValueError as exc:
        raise CLIError(f"--keyer: {exc}") from None
    try:  # the key colour and the output folder once, before any work
        given_key = None if auto else parse_key_colour(args.key_colour, name="--key-colour")
        out_dir = prepare_output_dir(args.out, "-o/--out")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    files = skip_own_outputs(files, args.inputs, out_dir)
    suffix = "_alpha.png" if args.alpha_only else "_rgba.png"
    names = output_names(files, suffix)
    plain = [os.path.splitext(os.path.basename(f))[0] + suffix for f in files]
    if names != plain:
        print("note: some inputs share a name; their outputs carry the extension: "
              + ", ".join(f"{os.path.basename(f)} -> {n}" for f, n, p in zip(files, names, plain) if n != p))
    max_pixels, why = memory_limit()
    shared = None
    if args.share_key and auto:
        frames = []
        for f in files:
            try:
                frames.append(torch.nn.functional.interpolate(load_image(f, max_pixels=max_pixels).rgb[None],
                                                              size=(128, 128), mode="area"))
            except ValueError:
                pass
        if frames:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoKeyColourWarning)  # said per image below
                shared = resolve_key_colours(AUTO, torch.cat(frames), share=True)[0]
    failures = 0
    for path, name in zip(files, names):
        try:
            img = load_image(path, max_pixels=max_pixels, limit_reason=why)
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
        if frames_note(img):
            notes.append(frames_note(img))
        if img.clipped:
            notes.append("it holds values outside [0, 1] (a float / HDR file); they were clipped to [0, 1]")
        key = shared if shared is not None and shared.found else (given_key or AUTO)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NoKeyColourWarning)
            try:
                res = key_image(img.rgb[None], keyer, alpha=given, key_colour=key, high_quality=args.high_quality,
                                despill=args.despill)
            except ValueError as exc:
                print(f"error: {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
        if img.source_mode not in ("gray", "gray+alpha"):
            said = {str(w.message).split(": ", 1)[-1] for w in caught if issubclass(w.category, NoKeyColourWarning)}
            notes.extend(sorted(n.replace("pass key_colour", "pass --key-colour") for n in said))
        bits = args.bits or img.bit_depth
        out = os.path.join(out_dir, name)
        try:
            if args.alpha_only:
                save_png(out, None, res.alpha[0], bits=bits)
            else:
                save_png(out, res.fg[0], res.alpha[0], bits=bits)
        except ValueError as exc:  # this name is too long for the file system (hostile X1): report it, go on
            print(f"error: {path}: cannot write its output: {exc}", file=sys.stderr)
            failures += 1
            continue
        except OSError as exc:  # disk full, folder removed meanwhile: stop, nothing partial is left
            raise CLIError(f"-o/--out: could not write {out}: {os_error_text(exc)}") from None
        used = res.keys[0]
        line = f"{path} -> {out}  (key {used.label})" if used.found else f"{path} -> {out}  (no key colour found)"
        print(line + "".join(f"\n  warning: {n}" for n in notes))
    if failures:
        raise CLIError(f"{failures} of {len(files)} input(s) could not be keyed (see above)")
    return 0
