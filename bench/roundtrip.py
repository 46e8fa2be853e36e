#!/usr/bin/env python
"""Round-trip benchmark (issue #20): an object's alpha after an upscale round trip through a key-colour canvas.

    .venv/bin/python bench/roundtrip.py                 # all subjects of ../shared/data/mattes, long side 800 px
    .venv/bin/python bench/roundtrip.py --limit 10 --max-side 640

Per subject (``<dir>/<name>/alpha.png`` + ``image.png``/``fg.png``, loaded as in bench/keying.py; ground truth =
that alpha at the working size, even height and width):
1. the key colour is chosen automatically from the object (``common.keychoice``, as ObjectOnCanvas does);
2. the object is downscaled 2x (area) and put on the flat canvas (``a F + (1 - a) K``, sRGB), 8-bit;
3. the canvas is upscaled back 2x by a stand-in for an upscale model: ``bicubic`` or ``lanczos`` (OpenCV), and, as
   the best an upscale model could do, ``ideal`` (the full-size canvas itself, 8-bit);
4. it is keyed by GreenPost with the small alpha as ``guide`` (``guided``), and without it (``own``: GreenPost's
   own key alone).
Baseline (same run): the small alpha upscaled alone with bicubic (``alpha_bicubic``), what a workflow without the
round trip does. Error: alpha MSE x 1000 against the ground truth (bench/metrics.py). Printed: a table per subject,
the means over subjects, the ratios to the baseline, and the same ratio on the even and on the odd subjects (both
halves must agree: nothing is tuned on particular subjects; the guide's constants in greenpost/guide.py were set on
the unit tests' constructed objects).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "mattes"

import metrics  # noqa: E402  (bench/metrics.py; the script's folder is on sys.path)
from keying import load_subjects  # noqa: E402  (bench/keying.py: the one subject loader)

UPSCALERS = ("bicubic", "lanczos", "ideal")


def _tensor(x: np.ndarray):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return x.permute(2, 0, 1)[None].contiguous() if x.ndim == 3 else x[None, None].contiguous()


def _q8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255) / 255


def run_subject(fg: np.ndarray, alpha: np.ndarray) -> tuple[str, dict[str, float]]:
    """fg HxWx3, alpha HxW float32 in [0,1] -> (the key's label, {column: alpha MSE x 1000})."""
    import cv2
    import torch

    from diffumatting.common.keychoice import choose_key_colours
    from diffumatting.greenpost import green_post

    h, w = alpha.shape[0] // 2 * 2, alpha.shape[1] // 2 * 2
    fg, alpha = fg[:h, :w], alpha[:h, :w]
    key = choose_key_colours(_tensor(fg), _tensor(alpha))[0]
    k = np.asarray(key.rgb, np.float32)
    full = alpha[..., None] * fg + (1 - alpha[..., None]) * k
    small = _q8(cv2.resize(full, (w // 2, h // 2), interpolation=cv2.INTER_AREA))  # = area(a F) + (1 - area(a)) K
    a_small = cv2.resize(alpha, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    out = {"alpha_bicubic": metrics.mse(np.clip(cv2.resize(a_small, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1),
                                        alpha)}
    images = {"bicubic": cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC),
              "lanczos": cv2.resize(small, (w, h), interpolation=cv2.INTER_LANCZOS4), "ideal": full}
    guide = _tensor(a_small)
    with torch.no_grad():
        for name, image in images.items():
            img = _tensor(_q8(image))
            out[f"guided_{name}"] = metrics.mse(green_post(img, key_colour=key, guide=guide).alpha[0, 0].numpy(), alpha)
            out[f"own_{name}"] = metrics.mse(green_post(img, key_colour=key).alpha[0, 0].numpy(), alpha)
    return key.label, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of <name>/alpha.png subjects")
    parser.add_argument("--limit", type=int, default=0, help="first N subjects only")
    parser.add_argument("--max-side", type=int, default=800, help="downscale larger subjects to this long side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data folder {args.data}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    subjects = load_subjects(args.data, args.limit or None, args.max_side)
    columns = ["alpha_bicubic"] + [f"{kind}_{u}" for u in UPSCALERS for kind in ("guided", "own")]
    print(f"alpha MSE x 1000, {len(subjects)} subjects, long side <= {args.max_side} px, round trip at 1/2 size")
    print(f"{'subject':42s} {'key':22s} " + " ".join(f"{c:>15s}" for c in columns))
    rows = []
    for name, fg, alpha in subjects:
        label, res = run_subject(fg, alpha)
        rows.append(res)
        print(f"{name[:42]:42s} {label[:22]:22s} " + " ".join(f"{res[c]:15.3f}" for c in columns), flush=True)
    means = {c: statistics.fmean(r[c] for r in rows) for c in columns}
    base = means["alpha_bicubic"]
    print(f"{'mean':65s} " + " ".join(f"{means[c]:15.3f}" for c in columns))
    print(f"{'ratio to alpha_bicubic':65s} " + " ".join(f"{means[c] / base:15.3f}" for c in columns))
    for half, part in (("even subjects", rows[0::2]), ("odd subjects", rows[1::2])):
        if part:
            b = statistics.fmean(r["alpha_bicubic"] for r in part)
            print(f"{'ratio, ' + half:65s} " + " ".join(f"{statistics.fmean(r[c] for r in part) / b:15.3f}"
                                                           for c in columns))
    wins = {c: sum(r[c] <= r["alpha_bicubic"] for r in rows) for c in columns}
    print(f"{'subjects at or below alpha_bicubic':65s} " + " ".join(f"{wins[c]:15d}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
