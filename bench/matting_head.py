"""Matting head benchmark on a real decoder (TAEF2): quality against GreenPost, and cost against the plain decode.

    .venv/bin/python bench/matting_head.py                      # held-out dev subjects, clean + realistic canvas
    .venv/bin/python bench/matting_head.py --data DIR           # any folder of <subject>/alpha.png + fg|image.png
    .venv/bin/python bench/matting_head.py --no-timing          # quality only

Quality: each subject's (colour, alpha) is composited onto a clean canvas (flat #00FF00) and a realistic one (a lit
chroma-green screen: gradient, vignetting, unevenness, hue drift, noise; see trainer/augment.py green_canvas),
encoded with the TAEF2 encoder and decoded with feature taps. Rows compare, on the same decoded image, GreenPost's
alpha (green_post on the decoded image, with the key estimated ("auto") and with the canvas's nominal key given; the
ratio uses the better of the two), the head's alpha (nominal key, as in training), and GreenPost fed the head's alpha
(the MattingHeadDecode -> GreenPost pipeline). Metrics (bench/metrics.py): SAD/1000, MSE x1000, Grad/1000, Conn/1000 over the whole image.
Subjects the head was trained on (listed in its metadata) are always skipped.
Cost: wall time (median of interleaved repeats) and peak resident memory (fresh subprocess per case, peak reset
after set-up) of the plain decode and of the head path (decode + taps + head), at each --sizes. With --device cuda:
GPU time (synchronised) and the peak of GPU memory allocated by the call (torch's counter, reset per call).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "mattes"
DEFAULT_TAESD = REPO_ROOT.parent / "shared" / "data" / "models" / "taef2"
DEFAULT_HEAD = REPO_ROOT / "weights" / "diffumatting_head_taef2.safetensors"


def _import_pack():
    import diffumatting

    return diffumatting


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _setup(args):
    _import_pack()
    import torch

    from diffumatting.matting_head.taesd import load_tiny_autoencoder
    from diffumatting.trainer.head import TaesdBackend, check_device
    from diffumatting.matting_head.weights import check_compatible, load_head

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.dev = check_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"--{exc}") from exc
    ae = load_tiny_autoencoder(args.taesd)
    backend = TaesdBackend(ae, ae.name).to(args.dev)
    head, info = load_head(args.head)
    check_compatible(info, backend.info())
    return backend, head.to(args.dev), info


def _latent_for_size(backend, size: int):
    import torch
    import torch.nn.functional as F

    from diffumatting.synthetic import synthetic_matte
    from diffumatting.trainer.augment import PURE_GREEN, green_canvas, over

    fg, a = synthetic_matte(size // 2, 7, "fine")
    fg = F.interpolate(fg[None], size=(size, size), mode="bilinear")[0]
    a = F.interpolate(a[None], size=(size, size), mode="bilinear")[0]
    img = over(fg, a, green_canvas(size, size, PURE_GREEN, False))[None]
    with torch.no_grad():
        return backend.encode(img)


def _run_case(backend, head, z, mode: str):
    import torch

    from diffumatting.matting_head.decode import decode_with_head

    with torch.inference_mode():
        out = backend.decode(z) if mode == "plain" else decode_with_head(backend.ae.decode, backend.spec, head, z)["alpha"]
    _sync(z.device)
    return out


def _sync(device) -> None:
    """Wait for queued GPU work (it is asynchronous: a timer must stop after it); nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_peak_mib(fn, device) -> float:
    """Peak GPU memory allocated while ``fn()`` runs, above what was allocated before it (MiB)."""
    import torch

    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return (peak - base) / 2 ** 20


def child_main(args) -> int:
    """Subprocess: set up, reset the peak RSS, run one case, print the peak increase in MiB."""
    backend, head, _ = _setup(args)
    import torch

    z = _latent_for_size(backend, args.child_size)
    _run_case(backend, head, z[..., :8, :8], args.child_mode)  # warm-up on a tiny latent (allocator, kernels)
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    out = _run_case(backend, head, z, args.child_mode)
    peak = _rss_kib("VmHWM")
    del out
    torch.set_num_threads(torch.get_num_threads())
    print(json.dumps({"peak_mib": (peak - base) / 1024}))
    return 0


def measure_memory(args, mode: str, size: int) -> float | None:
    cmd = [sys.executable, __file__, "--_child-mode", mode, "--_child-size", str(size), "--head", str(args.head),
           "--taesd", str(args.taesd), "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  (memory measurement failed for {mode} {size}: {res.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]


def timing(args, backend, head):
    rows = []
    for size in args.sizes:
        z = _latent_for_size(backend, size)
        _run_case(backend, head, z, "plain")  # warm-up
        _run_case(backend, head, z, "head")
        t = {"plain": [], "head": []}
        for _ in range(args.repeats):
            for mode in ("plain", "head"):
                t0 = time.perf_counter()
                _run_case(backend, head, z, mode)
                t[mode].append(time.perf_counter() - t0)
        plain, withhead = statistics.median(t["plain"]), statistics.median(t["head"])
        # peak memory: one fresh process per measurement, interleaved, median (a single reading swings by
        # +-30 % on a shared machine)
        mem = {"plain": [], "head": []}
        for _ in range(args.repeats):
            for mode in ("plain", "head"):
                m = (_gpu_peak_mib(lambda: _run_case(backend, head, z, mode), args.dev) if args.dev.type == "cuda"
                     else measure_memory(args, mode, size))
                if m is not None:
                    mem[mode].append(m)
        mem_plain = statistics.median(mem["plain"]) if mem["plain"] else None
        mem_head = statistics.median(mem["head"]) if mem["head"] else None
        rows.append((size, plain, withhead, mem_plain, mem_head))
    print()
    peak = ("peak = GPU memory allocated during the call above what it started with (torch counter)"
            if args.dev.type == "cuda" else
            f"peak = resident-memory increase during the call (median of {args.repeats} fresh processes)")
    print(f"Cost on {args.device_name}, torch threads {__import__('torch').get_num_threads()}, "
          f"median of {args.repeats} interleaved runs; {peak}")
    print("| size | plain decode s | head path s | time ratio | plain peak MiB | head peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for size, p, h, mp, mh in rows:
        mr = f"{mh / mp:.2f}" if mp and mh else "n/a"
        mps = f"{mp:.0f}" if mp else "n/a"
        mhs = f"{mh:.0f}" if mh else "n/a"
        print(f"| {size} | {p:.3f} | {h:.3f} | {h / p:.2f} | {mps} | {mhs} | {mr} |")
    return rows


def tiling(args, backend, head):
    """Tiled (512 px tiles, 128 px overlap) against untiled head decode on the largest --sizes image."""
    import torch

    from diffumatting.matting_head.decode import decode_with_head

    size = max(args.sizes)
    z = _latent_for_size(backend, size)
    with torch.inference_mode():
        full = decode_with_head(backend.ae.decode, backend.spec, head, z)
        tiled = decode_with_head(backend.ae.decode, backend.spec, head, z, tile=64, overlap=16)
    print()
    print(f"Tiled (512 px tiles, 128 px overlap) vs untiled, {size} px, TAEF2 + head")
    print("| output | mean abs diff | 99.9th pct | max |")
    print("|---|---|---|---|")
    for k in ("image", "alpha", "fg"):
        d = (full[k] - tiled[k]).abs().flatten().float()
        q = d.kthvalue(max(1, int(0.999 * d.numel()))).values.item()
        print(f"| {k} | {d.mean().item():.5f} | {q:.4f} | {d.max().item():.4f} |")


def quality(args, backend, head, info):
    import torch

    from diffumatting.greenpost import green_post
    from diffumatting.matting_head.decode import decode_with_head
    from diffumatting.trainer.augment import CHROMA_GREEN, PURE_GREEN
    from diffumatting.trainer.head_eval import prepare_eval
    from diffumatting.trainer.pairs import load_pairs
    import metrics  # bench/metrics.py (the script's folder is on sys.path): the same metric code as bench/keying.py

    def all_metrics(pred, gt):
        """pred, gt: [...,H,W] tensors in [0,1] -> SAD/1000, MSE x1000, Grad/1000, Conn/1000."""
        def flat(x):
            x = x.detach().float().cpu().numpy()
            return x.reshape(x.shape[-2], x.shape[-1])

        return metrics.all_metrics(flat(pred), flat(gt))

    trained = set((info.get("training") or {}).get("subjects") or [])
    names = None
    if args.subjects:
        names = [s for s in args.subjects.split(",") if s]
    pairs = load_pairs(args.data, names)
    skipped = sorted(p.name for p in pairs if p.name in trained)
    pairs = [p for p in pairs if p.name not in trained]
    if skipped:
        print(f"skipping {len(skipped)} subject(s) the head was trained on: {', '.join(skipped)}")
    if not pairs:
        raise SystemExit("no subjects left to evaluate (all were used in training)")
    print(f"evaluating {len(pairs)} held-out subject(s): {', '.join(p.name for p in pairs)}")
    summary = {}
    for canvas, realistic, key in (("clean", False, PURE_GREEN), ("realistic", True, CHROMA_GREEN)):
        prepared = prepare_eval(backend, pairs, realistic=realistic, key=key, keep_taps=False)
        key_t = torch.tensor(key)
        per = {"GreenPost (auto key)": [], "GreenPost (given key)": [], "head": [], "head+GreenPost": []}
        for item in prepared:
            with torch.inference_mode():
                res = decode_with_head(backend.ae.decode, backend.spec, head, item["latent"], key=key_t)
                rgb = res["image"]
                gp_auto = green_post(rgb, key_colour="auto", high_quality=args.greenpost_hq)
                gp_key = green_post(rgb, key_colour=key_t, high_quality=args.greenpost_hq)
                gp_head = green_post(rgb, alpha=res["alpha"], key_colour=key_t, high_quality=args.greenpost_hq)
            gt = item["alpha"]
            per["GreenPost (auto key)"].append(all_metrics(gp_auto.alpha, gt))
            per["GreenPost (given key)"].append(all_metrics(gp_key.alpha, gt))
            per["head"].append(all_metrics(res["alpha"], gt))
            per["head+GreenPost"].append(all_metrics(gp_head.alpha, gt))
            if args.per_subject:
                best = min(per["GreenPost (auto key)"][-1]["MSE"], per["GreenPost (given key)"][-1]["MSE"])
                print(f"  {canvas:9s} {item['name']:32s} MSE x1e3 GreenPost(best) {best:.3f} "
                      f"head {per['head'][-1]['MSE']:.3f}  ratio {per['head'][-1]['MSE'] / best:.2f}", flush=True)
        summary[canvas] = {k: {m: statistics.mean(d[m] for d in v) for m in ("SAD", "MSE", "Grad", "Conn")}
                           for k, v in per.items()}
    print()
    print(f"Quality on {len(pairs)} held-out subjects (mean over subjects; whole image; decoder {backend.name}; "
          f"key given = the canvas's nominal colour: #00FF00 clean, chroma green #00B140 realistic)")
    print("| canvas | method | SAD | MSE x1e3 | Grad | Conn | MSE vs best GreenPost |")
    print("|---|---|---|---|---|---|---|")
    for canvas, rows in summary.items():
        base = min(rows["GreenPost (auto key)"]["MSE"], rows["GreenPost (given key)"]["MSE"])
        for method, m in rows.items():
            print(f"| {canvas} | {method} | {m['SAD']:.2f} | {m['MSE']:.3f} | {m['Grad']:.2f} | {m['Conn']:.2f} | "
                  f"{m['MSE'] / base:.2f}x |")
    return summary


def kl_timing(args):
    """Ratio against ComfyUI's full-size SD1.5 AutoencoderKL decoder (random weights; same architecture as SDXL's),
    built with the class ComfyUI's VAE loader uses for it; the decoder runs in --kl-dtype, the head in fp32."""
    import logging

    from diffumatting.comfy_bootstrap import import_comfy

    import_comfy(args.comfyui, cpu=args.dev.type == "cpu", what="--comfyui")

    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from diffumatting.matting_head.decode import decode_with_head
    from diffumatting.matting_head.network import MattingHead
    from diffumatting.matting_head.taps import tap_spec

    ddconfig = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                    num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    logging.disable(logging.WARNING)
    fsm = AutoencoderKL(ddconfig=ddconfig, embed_dim=4).float().eval()
    logging.disable(logging.NOTSET)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in fsm.modules():
            w = getattr(m, "weight", None)
            if isinstance(w, torch.Tensor):
                if "Norm" in type(m).__name__:
                    w.fill_(1.0)
                else:
                    w.copy_(torch.randn(w.shape, generator=g) * (w[0].numel() ** -0.5 if w.ndim > 1 else 0.02))
            b = getattr(m, "bias", None)
            if isinstance(b, torch.Tensor):
                b.zero_()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.kl_dtype]
    fsm = fsm.to(args.dev, dtype)
    spec = tap_spec(fsm)
    head = MattingHead(spec.channels, {"prior": "greenpost"}).eval().to(args.dev)
    gpu = args.dev.type == "cuda"

    def dec(z):
        return ((fsm.decode(z.to(dtype)).float() + 1) / 2).clamp(0, 1)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        _sync(args.dev)
        return time.perf_counter() - t0

    print()
    print(f"Cost against ComfyUI's full-size SD1.5 VAE decoder on {args.device_name} (random weights, "
          f"{sum(p.numel() for p in fsm.decoder.parameters()) / 1e6:.1f} M decoder parameters in {args.kl_dtype}; head "
          f"{sum(p.numel() for p in head.parameters()) / 1e6:.2f} M in fp32 with the GreenPost prior, taps {spec.channels}"
          f"; median of {args.kl_repeats} interleaved runs after a warm-up)")
    print("| size | plain decode s | head path s | time ratio |" + (" plain peak MiB | head peak MiB | memory ratio |"
                                                                   if gpu else ""))
    print("|---|---|---|---|" + ("---|---|---|" if gpu else ""))
    key = torch.tensor([0.0, 1.0, 0.0], device=args.dev)
    for size in args.kl_sizes:
        z = torch.randn(1, 4, size // 8, size // 8, generator=g).to(args.dev)
        cases = {"plain": lambda: dec(z), "head": lambda: decode_with_head(dec, spec, head, z, key=key)}
        t = {"plain": [], "head": []}
        with torch.inference_mode():
            if gpu:  # warm-up: kernels, allocator, cuDNN algorithm choice
                for fn in cases.values():
                    timed(fn)
            for _ in range(args.kl_repeats):
                for mode, fn in cases.items():
                    t[mode].append(timed(fn))
            mem = {mode: _gpu_peak_mib(fn, args.dev) for mode, fn in cases.items()} if gpu else None
        p, h = statistics.median(t["plain"]), statistics.median(t["head"])
        row = f"| {size} | {p:.3f} | {h:.3f} | {h / p:.2f} |"
        if mem:
            row += f" {mem['plain']:.0f} | {mem['head']:.0f} | {mem['head'] / mem['plain']:.2f} |"
        print(row, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of <subject>/alpha.png + fg.png|image.png")
    p.add_argument("--subjects", default="", help="comma-separated subset of subjects")
    p.add_argument("--head", default=str(DEFAULT_HEAD))
    p.add_argument("--taesd", default=str(DEFAULT_TAESD), help="TAESD-family folder (encoder + decoder)")
    p.add_argument("--sizes", default="512,1024", help="image sizes (px) for the cost table")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto: where the decoder and head run")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--greenpost-hq", action="store_true", help="GreenPost with high_quality=True (slower)")
    p.add_argument("--per-subject", action="store_true")
    p.add_argument("--comfyui", default="", help="ComfyUI checkout: also time against its full-size SD1.5 VAE decoder")
    p.add_argument("--kl-sizes", default="256", help="sizes for the SD1.5 VAE comparison (slow on CPU)")
    p.add_argument("--kl-repeats", type=int, default=1)
    p.add_argument("--kl-dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="dtype of the SD1.5 VAE decoder in the --comfyui comparison (ComfyUI uses bf16 on recent GPUs)")
    p.add_argument("--_child-mode", dest="child_mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_child-size", dest="child_size", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_mode:
        return child_main(args)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.kl_sizes = [int(s) for s in args.kl_sizes.split(",") if s]
    backend, head, info = _setup(args)
    import platform

    args.device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible)"
    if args.dev.type == "cuda":
        import torch

        args.device_name = f"GPU {torch.cuda.get_device_name(args.dev)} (torch {torch.__version__})"
    tr = info.get("training") or {}
    print(f"head: {Path(args.head).name} ({sum(t.numel() for t in head.parameters()) / 1e6:.2f} M parameters; "
          f"decoder {info.get('decoder_name')}; trained {tr.get('steps')} steps / {tr.get('minutes')} min on "
          f"{len(tr.get('subjects') or [])} real subjects + synthetic; held out: {', '.join(tr.get('holdout') or [])})")
    if not args.no_quality:
        quality(args, backend, head, info)
    if not args.no_timing:
        timing(args, backend, head)
        tiling(args, backend, head)
    if args.comfyui:
        kl_timing(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
