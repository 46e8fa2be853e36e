"""Image files <-> tensors. Handles 8/16-bit, grayscale, palette and alpha PNGs; writes atomically."""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .files import atomic_path

MIN_SIZE = 8  # pixels per side; below this no keying or matting is meaningful


@dataclass
class LoadedImage:
    rgb: torch.Tensor  # [3,H,W] float32 in [0,1], sRGB-encoded
    alpha: torch.Tensor | None  # [1,H,W] float32 in [0,1] (1 = opaque) when the file has an alpha channel
    bit_depth: int  # 8 or 16
    source_mode: str  # "gray", "rgb", "gray+alpha", "rgba", "palette"


def load_image(path: str | os.PathLike, min_size: int = MIN_SIZE) -> LoadedImage:
    """Read an image file -> :class:`LoadedImage`. Grayscale is expanded to RGB; 16-bit keeps its precision.

    Raises ``ValueError`` (naming the file) if it cannot be read or is smaller than ``min_size`` px on a side.
    """
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise ValueError(f"{path}: not a readable image (expected PNG, JPEG, WebP, TIFF or BMP)")
    if arr.dtype == np.uint8:
        scale, depth = 255.0, 8
    elif arr.dtype == np.uint16:
        scale, depth = 65535.0, 16
    elif arr.dtype in (np.float32, np.float64):
        scale, depth = 1.0, 32
    else:
        raise ValueError(f"{path}: unsupported pixel type {arr.dtype} (expected 8- or 16-bit)")
    img = arr.astype(np.float32) / scale
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 1:
        rgb, alpha, mode = np.repeat(img, 3, axis=2), None, "gray"
    elif channels == 2:
        rgb, alpha, mode = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1], "gray+alpha"
    elif channels == 3:
        rgb, alpha, mode = img[:, :, ::-1], None, "rgb"
    elif channels == 4:
        rgb, alpha, mode = img[:, :, 2::-1], img[:, :, 3], "rgba"
    else:
        raise ValueError(f"{path}: {channels} channels (expected 1 to 4)")
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise ValueError(f"{path}: image is {w}x{h} px; at least {min_size}x{min_size} px is needed")
    rgb_t = torch.from_numpy(np.ascontiguousarray(np.clip(rgb, 0, 1))).permute(2, 0, 1).contiguous()
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(np.clip(alpha, 0, 1)))[None]
    return LoadedImage(rgb_t, alpha_t, min(depth, 16), mode)


def _to_uint(x: torch.Tensor, bits: int) -> np.ndarray:
    if bits not in (8, 16):
        raise ValueError(f"bits: expected 8 or 16, got {bits}")
    peak = 255 if bits == 8 else 65535
    arr = (x.detach().float().clamp(0, 1) * peak).round().cpu().numpy()
    return arr.astype(np.uint8 if bits == 8 else np.uint16)


def _png_text_chunks(text: dict[str, str]) -> bytes:
    out = b""
    for key, value in text.items():
        body = key.encode("latin-1") + b"\x00" + value.encode("latin-1", "replace")
        chunk = b"tEXt" + body
        out += struct.pack(">I", len(body)) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return out


def encode_png(rgb: torch.Tensor | None, alpha: torch.Tensor | None, bits: int = 8, text: dict[str, str] | None = None) -> bytes:
    """``rgb [3,H,W]`` and/or ``alpha [1,H,W]`` in [0,1] -> PNG bytes (RGBA, RGB or gray), 8 or 16 bit.

    ``text`` entries are stored as tEXt chunks (ComfyUI stores ``prompt`` and ``workflow`` JSON this way).
    """
    import cv2

    if rgb is None and alpha is None:
        raise ValueError("encode_png: need rgb, alpha or both")
    planes = []
    if rgb is not None:
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"rgb: expected [3,H,W], got {tuple(rgb.shape)}")
        planes.append(_to_uint(rgb, bits).transpose(1, 2, 0)[:, :, ::-1])  # OpenCV wants BGR
    if alpha is not None:
        if alpha.ndim == 2:
            alpha = alpha[None]
        if alpha.ndim != 3 or alpha.shape[0] != 1:
            raise ValueError(f"alpha: expected [1,H,W], got {tuple(alpha.shape)}")
        planes.append(_to_uint(alpha, bits).transpose(1, 2, 0))
    arr = np.ascontiguousarray(np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0])
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("encode_png: OpenCV could not encode the image")
    png = buf.tobytes()
    if text:
        # Insert the text chunks right after IHDR (8-byte signature + 25-byte IHDR chunk).
        png = png[:33] + _png_text_chunks(text) + png[33:]
    return png


def save_png(path: str | os.PathLike, rgb: torch.Tensor | None, alpha: torch.Tensor | None = None, bits: int = 8,
             text: dict[str, str] | None = None) -> None:
    """Write ``rgb [3,H,W]`` / ``alpha [1,H,W]`` (straight colour, 1 = opaque) as a PNG, atomically."""
    data = encode_png(rgb, alpha, bits=bits, text=text)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def read_png_text(path: str | os.PathLike) -> dict[str, str]:
    """tEXt chunks of a PNG file as a dict (for tests and tools that read embedded workflows)."""
    with open(path, "rb") as f:
        data = f.read()
    pos, out = 8, {}
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out
