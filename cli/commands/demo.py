"""`python -m diffumatting demo`: key the bundled procedural green-screen picture; write the RGBA and a composite."""

from __future__ import annotations

import os

from .. import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="key the bundled green-screen demo picture (no downloads)",
        description="Keys assets/demo_greenscreen.png (a procedural picture made by assets/make_demo.py: a ball with "
        "hair-like strands and a semi-transparent glass disc on a lit green screen) with GreenPost, and writes "
        "demo_rgba.png (straight RGB + alpha) and demo_composite.png (over a checkerboard) to the output folder.")
    p.add_argument("-o", "--out", default="demo_out", metavar="OUTDIR", help="output folder (default demo_out/)")
    p.add_argument("--high-quality", action="store_true",
                   help="high-quality mode: a second, coarser refinement scale averaged in (a little slower; slightly better on wide soft edges)")
    p.add_argument("--image", default=None, help="key this image instead of the bundled one")
    from ...matting_head.refine import add_keyer_arguments

    add_keyer_arguments(p)
    p.set_defaults(func=run)


def _demo_picture():
    """-> [3,H,W] float tensor of the bundled picture (rebuilt procedurally when the PNG is missing)."""
    import importlib.util

    import torch

    from ... import PACK_DIR
    from ...common.images import load_image

    path = os.path.join(PACK_DIR, "assets", "demo_greenscreen.png")
    if os.path.isfile(path):
        return load_image(path).rgb, path
    spec = importlib.util.spec_from_file_location("diffumatting_make_demo", os.path.join(PACK_DIR, "assets", "make_demo.py"))
    if spec is None or spec.loader is None:
        raise CLIError(f"the demo picture {path} and its maker assets/make_demo.py are missing")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    img, _ = mod.make_demo()
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), "assets/make_demo.py (procedural)"


def run(args) -> int:
    import time
    import warnings

    from ...common.files import os_error_text, prepare_output_dir
    from ...common.images import load_image, save_png
    from ...common.keycolour import NoKeyColourWarning
    from ...compositing import alpha_over, checkerboard
    from ...matting_head.refine import key_image, keyer_from_arguments
    from .key import memory_limit

    try:
        keyer = keyer_from_arguments(args)
    except ValueError as exc:
        raise CLIError(f"--keyer: {exc}") from None
    try:  # the output folder first: nothing is keyed for a folder that cannot be written
        out_dir = prepare_output_dir(args.out, "-o/--out")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.image:
        max_pixels, why = memory_limit()
        try:
            rgb, source = load_image(args.image, max_pixels=max_pixels, limit_reason=why).rgb, args.image
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    else:
        rgb, source = _demo_picture()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoKeyColourWarning)  # said once, in the summary line below
        try:
            res = key_image(rgb[None], keyer, high_quality=args.high_quality)
        except ValueError as exc:
            raise CLIError(f"{source}: {exc}") from None
    dt = time.perf_counter() - t0
    fg, alpha = res.fg[0], res.alpha[0]
    board = checkerboard(*fg.shape[-2:], dark=0.55)
    comp = alpha_over(fg[None], alpha[None], board)[0]
    rgba_path = os.path.join(out_dir, "demo_rgba.png")
    comp_path = os.path.join(out_dir, "demo_composite.png")
    try:
        save_png(rgba_path, fg, alpha)
        save_png(comp_path, comp)
    except OSError as exc:  # disk full, folder removed meanwhile: nothing partial is left
        raise CLIError(f"-o/--out: could not write into {out_dir}: {os_error_text(exc)}") from None
    used = res.keys[0]
    if used.found:
        found = f"key colour {used.label}"
    else:  # one clear line instead of the raw Python warnings
        found = "no green, blue or magenta screen found, so the result is opaque; `key --key-colour` keys any colour"
    print(f"keyed {source} ({fg.shape[-1]}x{fg.shape[-2]}, {found}) in {dt:.2f} s")
    print(f"wrote {rgba_path} (straight RGBA)")
    print(f"wrote {comp_path} (composite over a checkerboard)")
    return 0
