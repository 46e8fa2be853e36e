"""Files with real transparency: RGBA PNG (8/16 bit, straight alpha), WebM VP9 with alpha, PNG sequences."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import torch

from ..common.files import atomic_path
from ..common.images import encode_png


def _check_rgba(fg: torch.Tensor, alpha: torch.Tensor) -> None:
    if not isinstance(fg, torch.Tensor) or fg.ndim != 4 or fg.shape[1] != 3:
        raise ValueError(f"fg: expected [N,3,H,W], got {tuple(fg.shape) if isinstance(fg, torch.Tensor) else fg!r}")
    if not isinstance(alpha, torch.Tensor) or alpha.ndim != 4 or alpha.shape[1] != 1 or alpha.shape[0] != fg.shape[0] \
            or alpha.shape[-2:] != fg.shape[-2:]:
        raise ValueError(f"alpha: expected [N,1,H,W] matching fg {tuple(fg.shape)}, got {tuple(alpha.shape)}")
    if fg.shape[0] == 0 or fg.numel() == 0:
        raise ValueError(f"fg: empty batch (shape {tuple(fg.shape)}); expected at least one frame")
    for name, t in (("fg", fg), ("alpha", alpha)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: holds NaN or infinite values; expected finite values in [0, 1]")


def encode_rgba_png(fg: torch.Tensor, alpha: torch.Tensor, bits: int = 8, text: dict[str, str] | None = None) -> bytes:
    """fg [3,H,W] straight, alpha [1,H,W] (1 = opaque) in [0,1] -> RGBA PNG bytes (8 or 16 bit, straight alpha)."""
    return encode_png(fg, alpha, bits=bits, text=text)


def write_webm_rgba(path: str | os.PathLike, fg: torch.Tensor, alpha: torch.Tensor, fps: float = 24.0, crf: int = 20,
                    metadata: dict[str, str] | None = None) -> None:
    """fg [N,3,H,W] straight, alpha [N,1,H,W] (1 = opaque) in [0,1] -> WebM (VP9, yuva420p: colour + alpha), atomically.

    Odd sizes are padded by one transparent row/column (4:2:0 chroma needs even sizes). Needs PyAV with libvpx-vp9.
    """
    import av

    _check_rgba(fg, alpha)
    if not (0 < fps <= 1000):
        raise ValueError(f"fps: expected a frame rate in (0, 1000], got {fps}")
    if not (0 <= crf <= 63):
        raise ValueError(f"crf: expected 0..63 (lower = better quality), got {crf}")
    n, _, h, w = fg.shape
    rgba = torch.cat([fg, alpha], dim=1).detach().float().clamp(0, 1)
    rgba = torch.nn.functional.pad(rgba, (0, w % 2, 0, h % 2))
    frames = (rgba * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with atomic_path(path) as tmp:
        container = av.open(tmp, mode="w", format="webm")
        try:
            for key, value in (metadata or {}).items():
                container.metadata[key] = value
            stream = container.add_stream("libvpx-vp9", rate=Fraction(round(fps * 1000), 1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuva420p"
            stream.options = {"crf": str(int(crf)), "b:v": "0", "auto-alt-ref": "0"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgba")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()


def read_webm_rgba(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """WebM with alpha -> (fg [N,3,H,W], alpha [N,1,H,W]) in [0,1].

    Decodes with the libvpx-vp9 decoder: FFmpeg's native vp9 decoder ignores the alpha side data.
    """
    import av

    frames = []
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
        for packet in container.demux(stream):
            try:
                decoded = ctx.decode(packet)
            except av.error.EOFError:
                break
            frames.extend(fr.to_ndarray(format="rgba") for fr in decoded)
    if not frames:
        raise ValueError(f"{path}: no video frames decoded")
    arr = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    return arr[:, :3].contiguous(), arr[:, 3:4].contiguous()
