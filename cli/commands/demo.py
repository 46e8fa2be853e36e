"""`python -m diffumatting demo`: key the bundled procedural green-screen picture; write the RGBA and a composite."""

from __future__ import annotations

import os

from .. import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="key the bundled green-screen demo picture (no model weights, no downloads)",
        description="Keys assets/demo_greenscreen.png (a procedural picture made by assets/make_demo.py: a ball with "
        "hair-like strands and a semi-transparent glass disc on a lit green screen) with GreenPost, and writes "
        "demo_rgba.png (straight RGB + alpha) and demo_composite.png (over a checkerboard) to the output folder.")
    p.add_argument("-o", "--out", default="demo_out", metavar="OUTDIR", help="output folder (default demo_out/)")
    p.add_argument("--high-quality", action="store_true",
                   help="high-quality mode: a second, coarser refinement scale averaged in (a little slower; slightly better on wide soft edges)")
    p.add_argument("--image", default=None, help="key this image instead of the bundled one")
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

    from ...common.images import load_image, save_png
    from ...compositing import alpha_over, checkerboard
    from ...greenpost import green_post

    if args.image:
        try:
            rgb, source = load_image(args.image).rgb, args.image
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    else:
        rgb, source = _demo_picture()
    t0 = time.perf_counter()
    res = green_post(rgb[None], high_quality=args.high_quality)
    dt = time.perf_counter() - t0
    fg, alpha = res.fg[0], res.alpha[0]
    board = checkerboard(*fg.shape[-2:], dark=0.55)
    comp = alpha_over(fg[None], alpha[None], board)[0]
    os.makedirs(args.out, exist_ok=True)
    rgba_path = os.path.join(args.out, "demo_rgba.png")
    comp_path = os.path.join(args.out, "demo_composite.png")
    save_png(rgba_path, fg, alpha)
    save_png(comp_path, comp)
    used = res.keys[0]
    found = f"key colour {used.label}" if used.found else "no key colour found, result opaque"
    print(f"keyed {source} ({fg.shape[-1]}x{fg.shape[-2]}, {found}) in {dt:.2f} s")
    print(f"wrote {os.path.abspath(rgba_path)} (straight RGBA)")
    print(f"wrote {os.path.abspath(comp_path)} (composite over a checkerboard)")
    return 0
