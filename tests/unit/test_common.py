"""common/: key colours, image files (8/16-bit, gray, alpha), atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from diffumatting.common.keycolour import colour_to_hex, parse_key_colour
from diffumatting.common.files import atomic_path, atomic_write_text
from diffumatting.common.images import load_image, read_png_text, save_png


@pytest.mark.parametrize("value, expected", [
    ("pure_green", (0, 255, 0)), ("#00ff00", (0, 255, 0)), ("0F0", (0, 255, 0)), ("#FF00FF", (255, 0, 255)),
    ((0, 128, 255), (0, 128, 255)), ((0.0, 1.0, 0.0), (0, 255, 0)), ("0,177,64", (0, 177, 64)),
    ("green", (0, 177, 64)), ("chroma green #00B140", (0, 177, 64)), ("chroma_blue", (0, 71, 187)),
])
def test_parse_key_colour(value, expected):
    rgb = parse_key_colour(value).tensor()
    assert rgb.shape == (3,) and rgb.dtype == torch.float32
    assert torch.allclose(rgb * 255, torch.tensor(expected, dtype=torch.float32), atol=0.5)


@pytest.mark.parametrize("bad", ["chartreuse-ish", "#12345", (1, 2), (300, 0, 0), None, "0,x,1", "auto"])
def test_parse_key_colour_rejects_with_a_named_error(bad):
    with pytest.raises(ValueError, match="key_colour"):
        parse_key_colour(bad)


def test_colour_to_hex_round_trip():
    assert colour_to_hex(parse_key_colour("#12abef")) == "#12abef"


def test_png_round_trip_16_bit_rgba(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 20, 30, generator=gen)
    alpha = torch.rand(1, 20, 30, generator=gen)
    path = tmp_path / "x.png"
    save_png(path, rgb, alpha, bits=16, text={"prompt": "{\"a\": 1}"})
    loaded = load_image(path)
    assert loaded.bit_depth == 16 and loaded.source_mode == "rgba"
    assert (loaded.rgb - rgb).abs().max() < 1 / 65535 + 1e-6
    assert (loaded.alpha - alpha).abs().max() < 1 / 65535 + 1e-6
    assert read_png_text(path) == {"prompt": "{\"a\": 1}"}


def test_png_round_trip_8_bit_gray_is_expanded(tmp_path):
    gray = torch.linspace(0, 1, 16 * 16).reshape(1, 16, 16)
    path = tmp_path / "g.png"
    save_png(path, None, gray, bits=8)
    loaded = load_image(path)
    assert loaded.source_mode == "gray" and loaded.alpha is None
    assert loaded.rgb.shape == (3, 16, 16)
    assert torch.allclose(loaded.rgb[0], loaded.rgb[2])


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png: not a readable image"):
        load_image(junk)
    tiny = tmp_path / "tiny.png"
    save_png(tiny, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="4x4 px"):
        load_image(tiny)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    atomic_write_text(target, "whole")
    assert target.read_text() == "whole"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_files_get_normal_permissions(tmp_path):
    """Files written atomically are readable like files from open() (mkstemp alone would make them 0600)."""
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == 0o644


# ------------------------------------------------------------------------------------------------------------------
# issue #19 K2, K4, K6, K7, N5: EXIF orientation, output folders, NaN, size limits


def _exif(orientation: int) -> bytes:
    """Big-endian TIFF-structured EXIF data holding only IFD0's Orientation tag."""
    import struct

    return (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHI", 0x0112, 3, 1)
            + struct.pack(">HH", orientation, 0) + struct.pack(">I", 0))


def _jpeg_with_orientation(pixels, orientation: int) -> bytes:
    import struct

    import cv2

    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
    data, body = buf.tobytes(), b"Exif\x00\x00" + _exif(orientation)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_applies_the_exif_orientation_like_opencv_and_comfyui(tmp_path, orientation):
    # reference: OpenCV's own IMREAD_COLOR decoding applies the orientation (PIL's exif_transpose, which ComfyUI's
    # LoadImage uses, gives the same for JPEG); load_image reads with IMREAD_UNCHANGED, which does not
    import cv2
    import numpy as np

    from diffumatting.common.images import exif_orientation

    rng = np.random.default_rng(orientation)
    pixels = (rng.random((6, 10, 3)) * 255).astype(np.uint8).repeat(4, 0).repeat(4, 1)  # 24x40, blocky (JPEG-safe)
    data = _jpeg_with_orientation(pixels, orientation)
    (tmp_path / "o.jpg").write_bytes(data)
    assert exif_orientation(data) == orientation
    upright = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    got = (load_image(tmp_path / "o.jpg").rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert got.shape == upright.shape == ((24, 40, 3) if orientation <= 4 else (40, 24, 3))
    assert np.array_equal(got, upright)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_of_png_webp_and_tiff_matches_pil(tmp_path, fmt):
    PIL = pytest.importorskip("PIL", reason="Pillow (a test-only reference here) is not installed")
    import numpy as np
    from PIL import Image, ImageOps

    rgb = (np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        Image.fromarray(rgb, "RGB").save(path, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
        ref = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        got = (load_image(path).rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert got.shape == ref.shape and np.array_equal(got, ref), (fmt, orientation, PIL.__version__)


def test_load_image_refuses_nan_and_images_over_a_pixel_limit(tmp_path):
    import struct
    import zlib

    import cv2
    import numpy as np

    nan = np.full((16, 16, 3), np.nan, np.float32)
    cv2.imwrite(str(tmp_path / "nan.tiff"), nan)
    with pytest.raises(ValueError, match="nan.tiff: holds NaN or infinite values"):
        load_image(tmp_path / "nan.tiff")
    save_png(tmp_path / "ok.png", torch.rand(3, 20, 30))
    assert load_image(tmp_path / "ok.png", max_pixels=600).rgb.shape == (3, 20, 30)
    with pytest.raises(ValueError, match=r"30x20 px \(0\.0 Mpx\) is over the limit of 0\.0 Mpx, because"):
        load_image(tmp_path / "ok.png", max_pixels=599, limit_reason=", because")
    # the limit is read from the header, before decoding: a PNG that claims 60000x60000 px and holds no pixels
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    (tmp_path / "huge.png").write_bytes(head)
    with pytest.raises(ValueError, match=r"60000x60000 px \(3600\.0 Mpx\) is over the limit"):
        load_image(tmp_path / "huge.png", max_pixels=10**8)


def test_png_encoding_refuses_nan_and_empty_images(tmp_path):
    from diffumatting.common.images import encode_png

    bad = torch.rand(3, 8, 8)
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="rgb: holds NaN"):
        save_png(tmp_path / "x.png", bad)
    with pytest.raises(ValueError, match="alpha: holds NaN"):
        encode_png(torch.rand(3, 8, 8), torch.full((1, 8, 8), float("inf")))
    with pytest.raises(ValueError, match="rgb: empty"):
        encode_png(torch.rand(3, 0, 8), None)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_prepare_output_dir_refuses_unusable_folders_up_front(tmp_path):
    from diffumatting.common.files import prepare_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^-o: .*file is a file; expected a folder"):
        prepare_output_dir(tmp_path / "file", "-o")
    with pytest.raises(ValueError, match=r"^-o: cannot create the folder /proc/x"):
        prepare_output_dir("/proc/x", "-o")
    with pytest.raises(ValueError, match=r"^-o: cannot write into /proc/sys"):  # a folder nobody can write into
        prepare_output_dir("/proc/sys", "-o")
    made = prepare_output_dir(tmp_path / "a" / "b", "-o")
    assert os.path.isdir(made) and os.listdir(made) == []  # created, and the write probe left nothing
