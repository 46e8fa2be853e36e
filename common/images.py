"""Image files <-> tensors. Handles 8/16-bit, grayscale, palette and alpha PNGs and EXIF orientation; writes atomically."""

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
    clipped: bool = False  # a float file (TIFF) held values outside [0, 1], clipped to it
    frames: int = 1  # frames / pages in the file (animated GIF, APNG, animated WebP, multi-page TIFF); only the first is read


# ------------------------------------------------------------------------------------------------ EXIF orientation


def _tiff_orientation(tiff: bytes) -> int:
    """TIFF-structured EXIF data (``II*\0`` / ``MM\0*`` header) -> its IFD0 Orientation tag (1..8), 1 when absent."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for i in range(min(count, 512)):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112:
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            return int(value) if 1 <= value <= 8 else 1
    return 1


def exif_orientation(data: bytes) -> int:
    """Encoded image bytes (JPEG, PNG or WebP) -> the EXIF Orientation that OpenCV's ``IMREAD_UNCHANGED`` decoding
    leaves to apply (1..8; 1 = as stored, also when the file has none, and for TIFF, whose decoder applies it). Reads
    only the container's metadata, not the pixels."""
    try:
        if data[:2] == b"\xff\xd8":  # JPEG: APP1 "Exif\0\0" segment before the scan
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker in (0xD9, 0xDA):
                    break
                if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
                    pos += 1 if marker == 0xFF else 2
                    continue
                (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
                body = data[pos + 4 : pos + 2 + length]
                if marker == 0xE1 and body[:6] == b"Exif\x00\x00":
                    return _tiff_orientation(body[6:])
                pos += 2 + length
            return 1
        if data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG: an eXIf chunk
            pos = 8
            while pos + 8 <= len(data):
                (length,) = struct.unpack(">I", data[pos : pos + 4])
                kind = data[pos + 4 : pos + 8]
                if kind == b"eXIf":
                    return _tiff_orientation(data[pos + 8 : pos + 8 + length])
                if kind == b"IEND":
                    break
                pos += 12 + length
            return 1
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # WebP: an EXIF chunk
            pos = 12
            while pos + 8 <= len(data):
                kind = data[pos : pos + 4]
                (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
                if kind == b"EXIF":
                    body = data[pos + 8 : pos + 8 + length]
                    return _tiff_orientation(body[6:] if body[:6] == b"Exif\x00\x00" else body)
                pos += 8 + length + (length & 1)
            return 1
        # TIFF: OpenCV's TIFF decoder applies the file's Orientation tag itself (checked against PIL, tested)
    except struct.error:
        return 1
    return 1


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """[H,W(,C)] pixels as stored + EXIF Orientation 1..8 -> the upright pixels (what viewers and ComfyUI's LoadImage,
    via PIL's ``exif_transpose``, show)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def image_size(data: bytes) -> tuple[int, int] | None:
    """Encoded PNG or JPEG bytes -> (width, height) as stored, read from the header (no decoding); None otherwise."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            pos = 2
            while pos + 4 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
                    pos += 1 if marker == 0xFF else 2
                    continue
                if marker in (0xD9, 0xDA):
                    return None
                (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                    return w, h
                pos += 2 + length
    except struct.error:
        return None
    return None


# ------------------------------------------------------------------------------------------------ loading


def load_image(path: str | os.PathLike, min_size: int = MIN_SIZE, max_pixels: int | None = None,
               limit_reason: str = "") -> LoadedImage:
    """Read an image file -> :class:`LoadedImage`, upright (its EXIF orientation applied, as ComfyUI's LoadImage
    does). Grayscale is expanded to RGB; 16-bit keeps its precision.

    Raises ``ValueError`` (naming the file) if it cannot be read, holds NaN or infinite values (float TIFF), is
    smaller than ``min_size`` px on a side or has more than ``max_pixels`` pixels (PNG and JPEG are checked from
    their header, before decoding; ``limit_reason`` is appended to that message).
    """
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {not_a_file(path)}")
    data = np.fromfile(path, dtype=np.uint8)
    head = data[: 1 << 20].tobytes()
    if max_pixels is not None:
        size = image_size(head)
        if size is not None:
            _check_pixels(path, size[0], size[1], max_pixels, limit_reason)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if arr is None:
        raise ValueError(f"{path}: not a readable image (expected PNG, JPEG, WebP, TIFF or BMP)")
    if max_pixels is not None:
        _check_pixels(path, arr.shape[1], arr.shape[0], max_pixels, limit_reason)
    arr = apply_orientation(arr, exif_orientation(head))
    if arr.dtype in (np.float32, np.float64) and not np.isfinite(arr).all():
        raise ValueError(f"{path}: holds NaN or infinite values (expected finite values in [0, 1])")
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
        if _png_colour_type(head) == 4:  # OpenCV expands a grey + alpha (LA) PNG to BGRA: it is still greyscale
            mode = "gray+alpha"
    else:
        raise ValueError(f"{path}: {channels} channels (expected 1 to 4)")
    clipped = depth == 32 and bool(img.min() < 0 or img.max() > 1)
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise ValueError(f"{path}: image is {w}x{h} px; at least {min_size}x{min_size} px is needed")
    rgb_t = torch.from_numpy(np.ascontiguousarray(np.clip(rgb, 0, 1))).permute(2, 0, 1).contiguous()
    alpha_t = None if alpha is None else torch.from_numpy(np.ascontiguousarray(np.clip(alpha, 0, 1)))[None]
    return LoadedImage(rgb_t, alpha_t, min(depth, 16), mode, clipped, frame_count(path, head))


def not_a_file(path: str | os.PathLike) -> str:
    """Why ``path`` is not a regular file, in words for a one-line error: ``no such file``, ``is a folder``, ``is a
    named pipe (FIFO)``, ``is a device``... (hostile X13: a FIFO or a link to /dev/zero is not "missing")."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file (a broken symbolic link)" if os.path.islink(path) else "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a folder; expected an image file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file; expected an image file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file; expected an image file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file; expected an image file"
    return "is not a regular file; expected an image file"


def frame_count(path: str, head: bytes) -> int:
    """How many frames / pages an image file holds (animated GIF, APNG, animated WebP, multi-page TIFF), 1 for still
    images or when it cannot be told. :func:`load_image` reads only the first (hostile X12: callers say so)."""
    import cv2

    maybe = (head[:6] in (b"GIF87a", b"GIF89a") or head[:4] in (b"II*\x00", b"MM\x00*")
             or (head[:8] == b"\x89PNG\r\n\x1a\n" and b"acTL" in head.split(b"IDAT", 1)[0])
             or (head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and head[20] & 0x02))
    if not maybe:
        return 1
    try:
        return max(1, int(cv2.imcount(path)))
    except Exception:  # an odd file or an OpenCV without the decoder: the first frame was read, that is what counts
        return 1


def frames_note(img: LoadedImage) -> str | None:
    """The one-line note for a multi-frame file (only its first frame is used), or None for a still image."""
    if img.frames > 1:
        return (f"it holds {img.frames} frames (animated or multi-page); only the first was used (extract the "
                "frames to key them all)")
    return None


def _png_colour_type(head: bytes) -> int | None:
    """PNG bytes -> the IHDR colour type (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA); None for other files."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) > 25:
        return head[25]
    return None


def _check_pixels(path: str, width: int, height: int, max_pixels: int, reason: str) -> None:
    if width * height > max_pixels:
        raise ValueError(f"{path}: {width}x{height} px ({width * height / 1e6:.1f} Mpx) is over the limit of "
                         f"{max_pixels / 1e6:.1f} Mpx{reason}")


def _to_uint(x: torch.Tensor, bits: int, name: str = "image") -> np.ndarray:
    if bits not in (8, 16):
        raise ValueError(f"bits: expected 8 or 16, got {bits}")
    if x.numel() == 0:
        raise ValueError(f"{name}: empty (shape {tuple(x.shape)}); nothing to write")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: holds NaN or infinite values; expected finite values in [0, 1] (nothing written)")
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
        planes.append(_to_uint(rgb, bits, "rgb").transpose(1, 2, 0)[:, :, ::-1])  # OpenCV wants BGR
    if alpha is not None:
        if alpha.ndim == 2:
            alpha = alpha[None]
        if alpha.ndim != 3 or alpha.shape[0] != 1:
            raise ValueError(f"alpha: expected [1,H,W], got {tuple(alpha.shape)}")
        planes.append(_to_uint(alpha, bits, "alpha").transpose(1, 2, 0))
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
