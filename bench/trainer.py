"""Trainer throughput: optimizer steps per second and peak memory on a full-size SD1.5 checkpoint.

    COMFYUI_PATH=/path/to/ComfyUI python bench/trainer.py [--checkpoint FILE] [--resolution 256] [--steps 3]

Default checkpoint: the integration suite's full-size random-weight SD1.5 (``~/.cache/diffumatting-tests/
random_sd15.safetensors``, built by ``pytest -m slow tests/integration``). Two configurations are measured in the
same run on the same loaded model: the baseline (LoRA + plain diffusion loss, the cost of any LoRA trainer) and
the DiffuMatting joint loss (+ green-token attention recording, canvas and transition-boundary terms); the table
gives seconds per step, steps/s, the ratio to the baseline, and the process's peak memory (RSS; CUDA peak
allocation on a GPU). One warm-up step per configuration is not timed.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _import_alias():
    import diffumatting  # noqa: F401  (the installed pack: pip install -e .)


def peak_rss_gib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024**2 if sys.platform != "darwin" else r / 1024**3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(Path.home() / ".cache" / "diffumatting-tests" / "random_sd15.safetensors"))
    p.add_argument("--comfyui", default=None, help="ComfyUI folder (default $COMFYUI_PATH)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--conv-rank", type=int, default=8)
    p.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    args = p.parse_args(argv)

    _import_alias()
    import tempfile

    import torch

    from diffumatting.synthetic import synthetic_matte
    from diffumatting.comfy_bootstrap import load_checkpoint
    from diffumatting.trainer.data import DataOptions, GreenDataset
    from diffumatting.trainer.losses import LossWeights
    from diffumatting.trainer.loop import GreenTrainer, TrainOptions

    t0 = time.perf_counter()
    model, clip, vae = load_checkpoint(args.checkpoint, args.comfyui, cpu=args.cpu or None)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_gib()
    pairs = [(*synthetic_matte(args.resolution, i), "a toy") for i in range(4)]
    ds = GreenDataset(pairs, DataOptions(resolution=args.resolution, caption_dropout=0.0))
    device = model.load_device
    configs = [
        ("baseline: LoRA + L_ldm only", LossWeights(green=0.0, tb=0.0)),
        ("DiffuMatting joint loss", LossWeights()),
    ]
    rows = []
    amp = "fp32"
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode(False), torch.enable_grad():
        for name, weights in configs:
            opts = TrainOptions(out_dir=tmp, steps=args.steps + 1, batch_size=args.batch_size, rank=args.rank,
                                conv_rank=args.conv_rank, weights=weights, precision=args.precision, progress=False,
                                resume=False)
            tr = GreenTrainer(model, clip, vae, ds, opts)
            amp = str(tr.amp_dtype).replace("torch.", "") if tr.amp_dtype is not None else "fp32"
            tr.lora.attach()
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                tr.step()  # warm-up (prompt cache, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                terms = None
                for _ in range(args.steps):
                    terms = tr.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = (time.perf_counter() - t1) / args.steps
                cuda_peak = torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None
            finally:
                tr.lora.detach()
            rows.append((name, dt, terms["loss"], cuda_peak, sum(p.numel() for p in tr.lora.parameters())))
            del tr

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nTrainer benchmark: {Path(args.checkpoint).name}, {args.resolution}x{args.resolution} px, "
          f"batch {args.batch_size}, LoRA rank {args.rank}/conv {args.conv_rank}, device {dev_name}, "
          f"compute {amp}")
    print(f"checkpoint load: {load_s:.1f} s; peak RSS after load: {rss_after_load:.2f} GiB\n")
    print("| configuration | s/step | steps/s | x baseline | last loss | LoRA params | CUDA peak GiB |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0][1]
    for name, dt, loss, cuda_peak, n in rows:
        cp = f"{cuda_peak:.2f}" if cuda_peak is not None else "-"
        print(f"| {name} | {dt:.2f} | {1 / dt:.3f} | {dt / base:.2f} | {loss:.4f} | {n / 1e6:.2f} M | {cp} |")
    print(f"\npeak RSS of the process: {peak_rss_gib():.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
