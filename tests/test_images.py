"""load_image and read_exif_gps on generated files: every bad file is one ImageError with a kind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from rag_store.errors import ImageError, InputError
from rag_store.images import MAX_PIXELS, load_image, read_exif_gps
from tests.imagegen import (
    GPS_IFD,
    ORIENTATION,
    bomb_png,
    cmyk_jpeg,
    gps_jpeg,
    grey16_png,
    grey16_tiff_big_endian,
    noise_jpeg,
    rgba_png,
)


def kind_of(src, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        load_image(src, **kwargs)
    assert str(info.value), "an ImageError must say what is wrong"
    assert "\n" not in str(info.value)
    return info.value.kind


# ------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.kind == "missing file"
    assert str(path) in str(info.value)


def test_directory_is_not_a_photo(tmp_path):
    assert kind_of(tmp_path) == "missing file"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert kind_of(path) == "not an image"


def test_random_bytes_named_jpg(tmp_path):
    path = tmp_path / "random.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert kind_of(path) == "not an image"


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    assert kind_of(path) == "not an image"
    assert kind_of(path.read_bytes()) == "not an image"


def test_truncated_jpeg(tmp_path):
    whole = noise_jpeg(tmp_path / "whole.jpg", seed=3, size=(128, 96)).read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    assert kind_of(path) == "corrupt image"
    assert kind_of(whole[: len(whole) // 2]) == "corrupt image"


def test_truncated_real_photo(sample_dir, tmp_path):
    photo = next((sample_dir / "images").glob("*.jpg"))
    data = photo.read_bytes()
    assert load_image(data).mode == "RGB"
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert kind_of(path) == "corrupt image"


def test_image_error_is_an_input_error(tmp_path):
    # Callers catch InputError (or ValueError) for everything a user can correct.
    with pytest.raises(InputError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError):
        load_image(b"garbage")


def test_unsupported_type():
    with pytest.raises(ImageError):
        load_image(12345)  # type: ignore[arg-type]


# ------------------------------------------------------------------ decompression bombs


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


def test_decompression_bomb_is_small_on_disk_and_refused(bomb):
    assert os.path.getsize(bomb) < 2_000_000  # small file ...
    with Image.open(bomb) as im:  # ... whose header says it decodes to 100M pixels
        assert im.size[0] * im.size[1] > MAX_PIXELS
    with pytest.raises(ImageError) as info:
        load_image(bomb)
    assert info.value.kind == "decompression bomb"
    assert str(bomb) in str(info.value)


def test_decompression_bomb_as_bytes(bomb):
    assert kind_of(bomb.read_bytes()) == "decompression bomb"


def test_max_pixels_is_our_own_limit(tmp_path):
    # Far below Pillow's own limit: only load_image's check can refuse it.
    path = noise_jpeg(tmp_path / "small.jpg", seed=4, size=(100, 100))
    assert kind_of(path, max_pixels=9_999) == "decompression bomb"
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    assert kind_of(Image.new("RGB", (100, 100)), max_pixels=5_000) == "decompression bomb"


# ------------------------------------------------------------------ odd but valid photos


def test_plain_jpeg_path_bytes_and_pil_agree(tmp_path):
    path = noise_jpeg(tmp_path / "ok.jpg", seed=5)
    a = np.asarray(load_image(path))
    b = np.asarray(load_image(path.read_bytes()))
    c = np.asarray(load_image(str(path)))
    with Image.open(path) as im:
        d = np.asarray(load_image(im))
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    im = load_image(cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert im.mode == "RGB"
    r, g, b = np.asarray(im).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, (r, g, b)  # still red, not inverted


@pytest.mark.parametrize(
    ("make", "name", "mode"),
    [(grey16_png, "grey16.png", "I;16"), (grey16_tiff_big_endian, "grey16be.tif", "I;16B")],
)
def test_16bit_greyscale_is_scaled_not_clipped(tmp_path, make, name, mode):
    path = make(tmp_path / name)
    with Image.open(path) as raw:
        assert raw.mode == mode
    im = load_image(path)
    assert im.mode == "RGB"
    arr = np.asarray(im).astype(int)
    assert arr.min() <= 5 and arr.max() >= 250  # the full range survives
    assert 100 < arr.mean() < 155  # a ramp, not all white or all black
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    # Monotonic like the 16-bit ramp it came from.
    flat = arr[..., 0].reshape(-1)
    assert np.all(np.diff(flat) >= 0)


def test_rgba_transparent_area_becomes_white(tmp_path):
    im = load_image(rgba_png(tmp_path / "rgba.png"))
    assert im.mode == "RGB"
    assert im.getpixel((5, 5)) == (0, 0, 255)  # opaque part kept
    assert im.getpixel((60, 5)) == (255, 255, 255)  # transparent part white, not black


def test_la_transparent_area_becomes_white():
    la = Image.new("LA", (16, 16), (0, 0))
    assert load_image(la).getpixel((3, 3)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 16, 32))  # left half index 1 (blue); right half index 0 (red, transparent)
    path = tmp_path / f"pal.{fmt.lower()}"
    pal.save(path, fmt, transparency=0)
    im = load_image(path)
    assert im.mode == "RGB"
    assert im.getpixel((5, 5)) == (0, 0, 255)
    assert im.getpixel((25, 5)) == (255, 255, 255)


def test_palette_without_transparency(tmp_path):
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([10, 200, 30] + [0] * (256 * 3 - 3))
    path = tmp_path / "pal.png"
    pal.save(path)
    assert load_image(path).getpixel((1, 1)) == (10, 200, 30)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 80x40: left half red, right half blue. Orientation 6 = rotate 90 deg clockwise.
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, "JPEG", quality=95, exif=exif)
    im = load_image(path)
    assert im.size == (40, 80)  # upright: portrait
    top, bottom = np.asarray(im)[10, 20], np.asarray(im)[70, 20]
    assert top[0] > 200 and top[2] < 50  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50


def test_without_orientation_tag_nothing_rotates(tmp_path):
    path = noise_jpeg(tmp_path / "plain.jpg", seed=6, size=(80, 40))
    assert load_image(path).size == (80, 40)


# ------------------------------------------------------------------ EXIF GPS


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(48.8584, 2.2945), (-33.8568, 151.2153), (40.6892, -74.0445), (-22.9519, -43.2105)],
)
def test_read_exif_gps_signs(tmp_path, lat, lon):
    path = gps_jpeg(tmp_path / "gps.jpg", lat, lon)
    got = read_exif_gps(path)
    assert got is not None
    assert got == pytest.approx((lat, lon), abs=1e-4)
    # the same from bytes and from an open image
    assert read_exif_gps(path.read_bytes()) == pytest.approx((lat, lon), abs=1e-4)
    with Image.open(path) as im:
        assert read_exif_gps(im) == pytest.approx((lat, lon), abs=1e-4)


def test_exif_gps_still_read_after_load_image_reads_the_photo(tmp_path):
    path = gps_jpeg(tmp_path / "gps.jpg", 35.6586, 139.7454)
    assert load_image(path).mode == "RGB"
    assert read_exif_gps(str(path)) == pytest.approx((35.6586, 139.7454), abs=1e-4)


def test_read_exif_gps_none_without_gps(tmp_path):
    assert read_exif_gps(noise_jpeg(tmp_path / "plain.jpg", seed=7)) is None
    exif = Image.Exif()
    exif[ORIENTATION] = 1  # EXIF present, but no GPS block
    path = tmp_path / "exif-no-gps.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=exif)
    assert read_exif_gps(path) is None


@pytest.mark.parametrize(("lat", "lon"), [(95.0, 10.0), (10.0, 200.0), (-91.0, -181.0)])
def test_read_exif_gps_none_when_out_of_range(tmp_path, lat, lon):
    assert read_exif_gps(gps_jpeg(tmp_path / "bad.jpg", lat, lon)) is None


def test_read_exif_gps_none_when_only_latitude(tmp_path):
    exif = Image.Exif()
    exif[GPS_IFD] = {1: "N", 2: (IFDRational(45, 1), IFDRational(0, 1), IFDRational(0, 1))}
    path = tmp_path / "lat-only.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=exif)
    assert read_exif_gps(path) is None


def test_read_exif_gps_none_on_zero_denominator(tmp_path):
    exif = Image.Exif()
    exif[GPS_IFD] = {
        1: "N",
        2: (IFDRational(10, 0), IFDRational(0, 1), IFDRational(0, 1)),
        3: "E",
        4: (IFDRational(10, 1), IFDRational(0, 1), IFDRational(0, 1)),
    }
    path = tmp_path / "zero-den.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=exif)
    assert read_exif_gps(path) is None


def test_read_exif_gps_none_for_bad_files(tmp_path):
    assert read_exif_gps(tmp_path / "missing.jpg") is None
    assert read_exif_gps(b"not an image") is None
