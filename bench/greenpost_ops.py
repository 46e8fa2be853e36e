#!/usr/bin/env python
"""GreenPost's op and host-sync counts per image (torch profiler on CPU, torch paths as on a GPU).

On a GPU the keyer is launch-bound: every top-level aten op is at least one kernel launch, and every host sync
(``.item()``, ``nonzero``, a boolean-mask index, a copy to the CPU) stalls the queue. This counts both per image in
a batch of frames keyed in one call, with the OpenCV fast paths off (they run only on CPU float32; a GPU takes the
torch paths counted here), for the default and the high-quality mode.

    .venv/bin/python bench/greenpost_ops.py                 # batches of 1 and 16 frames of 512x512
    .venv/bin/python bench/greenpost_ops.py --batch 1,4,16 --size 256
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

# ops that wait for the device: their result decides host-side control flow or lands on the host
SYNC_OPS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal",
            "aten::masked_select", "aten::unique", "aten::_unique2", "aten::median", "aten::nanmedian",
            "aten::allclose", "aten::tolist"}


def frames(batch: int, size: int) -> torch.Tensor:
    """-> [B,3,size,size] distinct synthetic objects (the pack's procedural mattes) over a lit, noisy green screen."""
    from diffumatting.synthetic import synthetic_matte

    out = []
    for i in range(batch):
        fg, a = synthetic_matte(size, seed=100 + i, family="fine" if i % 2 else "shapes")
        yy = torch.linspace(0, 1, size)[:, None]
        screen = torch.tensor([0.10, 0.70, 0.25])[:, None, None] * (0.85 + 0.15 * yy)
        g = torch.Generator().manual_seed(i)
        noise = 0.01 * torch.randn(3, size, size, generator=g)
        out.append((a * fg + (1 - a) * screen + noise).clamp(0, 1))
    return torch.stack(out)


def count(fn) -> tuple[int, int, int, Counter]:
    """fn() under the profiler -> (top-level aten ops on the images' device, host syncs, ops on host copies of cell
    grids (inside greenpost.screen.host_statistics: not launches on a GPU), Counter of the syncs by op name)."""
    from torch.profiler import ProfilerActivity, profile

    from diffumatting.greenpost.screen import HOST_STATISTICS

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops, host, syncs = 0, 0, Counter()
    for ev in prof.events():
        if not ev.name.startswith("aten::"):
            continue
        parent, on_host = ev.cpu_parent, False
        while parent is not None and not parent.name.startswith("aten::"):
            on_host = on_host or parent.name == HOST_STATISTICS
            parent = parent.cpu_parent
        if parent is None and on_host:
            host += 1
            continue
        p = ev.cpu_parent
        while p is not None:  # an op nested under an aten op inside the host range is host work too
            if p.name == HOST_STATISTICS:
                on_host = True
            p = p.cpu_parent
        if on_host:
            continue
        if ev.name in SYNC_OPS:
            # a sync counts once, however deep (nonzero inside index, item inside median's bookkeeping)
            p = ev.cpu_parent
            while p is not None and p.name not in SYNC_OPS:
                p = p.cpu_parent
            if p is None:
                syncs[ev.name] += 1
        if parent is None:
            ops += 1
    return ops, sum(syncs.values()), host, syncs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=512, help="frame side in px")
    args = ap.parse_args(argv)
    from diffumatting.greenpost import green_post
    from diffumatting.greenpost.band import opencv_paths

    torch.set_num_threads(1)
    rows = []
    for hq in (False, True):
        for b in (int(v) for v in args.batch.split(",")):
            x = frames(b, args.size)
            with opencv_paths(False):
                green_post(x, high_quality=hq)  # warm-up: lazy imports, allocator
                ops, syncs, host, by = count(lambda: green_post(x, high_quality=hq))
            rows.append((("high_quality" if hq else "default"), b, ops, syncs, ops / b, syncs / b, host,
                         ", ".join(f"{k.split('::')[1]} {v}" for k, v in by.most_common(4))))
    print(f"GreenPost op and sync counts, {args.size}x{args.size} frames, torch paths (as on a GPU)\n")
    print(f"{'mode':<13} {'batch':>5} {'ops':>7} {'syncs':>6} {'ops/img':>8} {'syncs/img':>9} {'host ops':>8}  top syncs")
    for mode, b, ops, syncs, opi, syi, host, top in rows:
        print(f"{mode:<13} {b:>5} {ops:>7} {syncs:>6} {opi:>8.0f} {syi:>9.1f} {host:>8}  {top}")
    print("\nops: top-level aten ops on the images' device (a GPU launches at least one kernel each); syncs: ops whose "
          "result the host waits for; host ops: work on small host copies of the cell grids (fill, trend fit), not "
          "launches")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
