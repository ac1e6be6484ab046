"""Decoding: every colour mode to RGB, transparency on white, EXIF rotation, damaged files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from visiontune.data.images import ImageDecodeError, decode_image, to_rgb

W, H = 48, 32  # not square, so a swapped width and height shows


def _gradient(dtype, hi) -> np.ndarray:
    """A left-to-right ramp from 0 to ``hi`` (H x W)."""
    return np.tile(np.linspace(0, hi, W), (H, 1)).astype(dtype)


def _rgba() -> Image.Image:
    arr = np.zeros((H, W, 4), np.uint8)
    arr[..., 0] = 200  # red ...
    arr[..., 3] = 255
    arr[:, : W // 2, 3] = 0  # ... with the left half fully transparent (its colour is garbage)
    arr[:, : W // 2, :3] = (0, 0, 0)
    return Image.fromarray(arr, "RGBA")


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("P", (W, H), 0)
    img.putpalette([10, 200, 30] + [0, 0, 0] * 255)  # index 0 green, index 1 black
    img.paste(1, (W // 2, 0, W, H))  # right half black
    if transparent:
        img.info["transparency"] = 1
    return img


def _cases():
    la = Image.merge(
        "LA",
        (
            Image.new("L", (W, H), 0),
            Image.fromarray(
                np.where(np.arange(W) < W // 2, 0, 255).astype(np.uint8)[None].repeat(H, 0), "L"
            ),
        ),
    )
    return {
        "RGB": (Image.new("RGB", (W, H), (10, 120, 240)), ".png"),
        "RGBA": (_rgba(), ".png"),
        "LA": (la, ".png"),
        "P": (_palette(False), ".png"),
        "P-transparency": (_palette(True), ".png"),
        "P-gif": (_palette(True), ".gif"),
        "L": (Image.fromarray(_gradient(np.uint8, 255), "L"), ".png"),
        "1": (Image.fromarray(_gradient(np.uint8, 255), "L").convert("1"), ".png"),
        "CMYK": (Image.new("RGB", (W, H), (200, 30, 30)).convert("CMYK"), ".jpg"),
        "I;16": (Image.fromarray(_gradient(np.uint16, 65535)), ".png"),
        "I": (Image.fromarray(_gradient(np.int32, 65535)), ".tif"),
        "F": (Image.fromarray(_gradient(np.float32, 1.0)), ".tif"),
        "RGB-webp": (Image.new("RGB", (W, H), (10, 120, 240)), ".webp"),
        "RGB-bmp": (Image.new("RGB", (W, H), (10, 120, 240)), ".bmp"),
    }


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mode_decodes_to_rgb_of_the_right_size(tmp_path, case):
    img, ext = CASES[case]
    path = tmp_path / f"img{ext}"
    img.save(path)
    decoded = decode_image(path)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (W, H)
    assert decoded.note is None
    np.asarray(decoded.image)  # fully loaded, convertible


def _decode(tmp_path, case) -> np.ndarray:
    img, ext = CASES[case]
    img.save(tmp_path / f"x{ext}")
    return np.asarray(decode_image(tmp_path / f"x{ext}").image).astype(int)


def test_rgba_transparent_pixels_become_white(tmp_path):
    arr = _decode(tmp_path, "RGBA")
    assert (arr[:, : W // 2] == 255).all()  # transparent black -> white, not black
    assert (arr[:, W // 2 :] == (200, 0, 0)).all()  # opaque pixels keep their colour


def test_la_transparent_pixels_become_white(tmp_path):
    arr = _decode(tmp_path, "LA")
    assert (arr[:, : W // 2] == 255).all()
    assert (arr[:, W // 2 :] == 0).all()


@pytest.mark.parametrize("case", ["P-transparency", "P-gif"])
def test_palette_transparency_becomes_white(tmp_path, case):
    arr = _decode(tmp_path, case)
    assert (arr[:, : W // 2] == (10, 200, 30)).all()
    assert (arr[:, W // 2 :] == 255).all()  # the transparent palette index, on white


def test_palette_without_transparency_keeps_its_colours(tmp_path):
    arr = _decode(tmp_path, "P")
    assert (arr[:, : W // 2] == (10, 200, 30)).all()
    assert (arr[:, W // 2 :] == 0).all()


def test_bilevel_is_black_and_white(tmp_path):
    arr = _decode(tmp_path, "1")
    assert set(np.unique(arr)) == {0, 255}
    assert (arr[:, 0] == 0).all() and (arr[:, -1] == 255).all()


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    r, g, b = _decode(tmp_path, "CMYK")[H // 2, W // 2]
    assert abs(r - 200) < 12 and g < 50 and b < 50


@pytest.mark.parametrize("case", ["I;16", "I", "F", "L"])
def test_high_bit_depth_keeps_contrast(tmp_path, case):
    """A 0..max ramp stays a ramp from black to white: scaled, not clipped to white."""
    arr = _decode(tmp_path, case)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()  # grey
    row = arr[H // 2, :, 0]
    assert row[0] <= 1 and row[-1] >= 254
    assert abs(row[W // 2] - 128) <= 4  # mid-grey in the middle, not white
    assert (np.diff(row) >= 0).all()  # monotonic, no wrap-around
    assert len(np.unique(row)) >= W - 2  # the steps survive


def test_32_bit_integers_are_stretched_not_clipped(tmp_path):
    Image.fromarray(_gradient(np.int32, 2_000_000)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    row = np.asarray(decode_image(tmp_path / "i32.tif").image).astype(int)[H // 2, :, 0]
    assert row[0] == 0 and row[-1] == 255 and abs(row[W // 2] - 128) <= 4
    assert (np.diff(row) >= 0).all()


def test_16_bit_png_is_opened_as_16_bit(tmp_path):
    Image.fromarray(_gradient(np.uint16, 65535)).save(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")  # so the test above covers it


def test_float_image_with_constant_value_does_not_divide_by_zero(tmp_path):
    Image.fromarray(np.full((H, W), 3.5, np.float32)).save(tmp_path / "f.tif")
    arr = np.asarray(decode_image(tmp_path / "f.tif").image)
    assert arr.shape == (H, W, 3)
    assert np.isfinite(arr).all()


def test_to_rgb_returns_rgb_unchanged():
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(img) is img


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation, transposed", [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_is_applied(tmp_path, orientation, transposed):
    arr = np.zeros((H, W, 3), np.uint8)
    arr[: H // 4, : W // 4] = 255  # a white top-left corner shows where the rotation put it
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    decoded = decode_image(tmp_path / "o.jpg").image
    assert decoded.size == ((H, W) if transposed else (W, H))
    out = np.asarray(decoded).astype(int).mean(axis=2)
    corners = {"tl": out[:4, :4], "tr": out[:4, -4:], "bl": out[-4:, :4], "br": out[-4:, -4:]}
    # Orientation 6 means "rotate 90 degrees clockwise to display": top-left goes to top-right.
    expected = {1: "tl", 3: "br", 6: "tr", 8: "bl"}[orientation]
    assert corners[expected].mean() > 200
    assert all(c.mean() < 60 for k, c in corners.items() if k != expected)


# --------------------------------------------------------------------------- damaged files


def _photo_jpeg(path, size=(160, 120), **kwargs):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, quality=90, **kwargs
    )
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_jpeg_loads_with_a_note(tmp_path, keep, progressive):
    data = _photo_jpeg(tmp_path / "full.jpg", progressive=progressive)
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(OSError):  # really damaged: plain Pillow refuses it
        Image.open(tmp_path / "cut.jpg").load()
    decoded = decode_image(tmp_path / "cut.jpg")
    assert decoded.note is not None and "truncated" in decoded.note
    assert decoded.image.mode == "RGB" and decoded.image.size == (160, 120)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global switch is restored


def test_truncated_jpeg_with_decode_time_downscaling(tmp_path):
    data = _photo_jpeg(tmp_path / "full.jpg", size=(800, 600))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    decoded = decode_image(tmp_path / "cut.jpg", min_short_side=100)
    assert "truncated" in decoded.note
    assert min(decoded.image.size) >= 100


def test_jpeg_draft_decodes_smaller_but_not_below_the_request(tmp_path):
    _photo_jpeg(tmp_path / "big.jpg", size=(800, 600))
    small = decode_image(tmp_path / "big.jpg", min_short_side=100).image
    assert small.size[0] < 800 and min(small.size) >= 100
    assert small.size[0] * 600 == small.size[1] * 800  # aspect ratio kept
    assert decode_image(tmp_path / "big.jpg").image.size == (800, 600)


def test_png_named_jpg_decodes_by_content(tmp_path):
    Image.new("RGBA", (W, H), (0, 0, 0, 0)).save(tmp_path / "really_png.jpg", format="PNG")
    decoded = decode_image(tmp_path / "really_png.jpg")
    assert decoded.image.size == (W, H)
    assert (np.asarray(decoded.image) == 255).all()  # decoded as the PNG it is, alpha and all


def test_random_bytes_named_jpg_raise(tmp_path):
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ImageDecodeError, match="noise.jpg"):
        decode_image(tmp_path / "noise.jpg")


def test_zero_byte_png_raises(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.png"):
        decode_image(tmp_path / "empty.png")


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError):
        decode_image(tmp_path / "gone.png")


def test_decode_error_message_is_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tmp_path / "bad.png")
    assert "\n" not in str(info.value)


def test_dark_16_bit_image_is_scaled_as_16_bit(tmp_path):
    """A 16-bit image whose values all sit below 256 is dark, not an 8-bit image."""
    import numpy as np
    from PIL import Image

    from visiontune.data.images import decode_image

    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(path)
    decoded = decode_image(path).image
    assert np.asarray(decoded).max() <= 1
