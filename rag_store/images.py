"""Reading photos safely: every way a file can be bad becomes one ``ImageError``.

Indexing and locating both read photos through ``load_image`` so that a CMYK,
16-bit, palette or transparent photo is turned into the same 8-bit RGB image
everywhere, and so that a decompression bomb is refused before it is decoded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .coords import LatLon, check_latlon
from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")  # photos in a folder

# Refuse anything over 64 megapixels before decoding it: far above any real
# benchmark photo, far below what would exhaust memory.
MAX_PIXELS = 64_000_000
# A photo is never more than this many times longer than wide (or the reverse): the long
# side is centre-cropped. Encoders scale the SHORT side to ~256 px, so a 1x40000 PNG
# (118 bytes) would otherwise become a 256 x 10,240,000 image (~10 GB) in preprocessing.
# Their centre crop only ever sees the middle square, which the crop keeps; 8:1 still
# keeps the whole of any real panorama sent to the model.
MAX_ASPECT = 8.0
# JPEGs are decoded at a reduced scale (1/2, 1/4, 1/8, in the DCT: no full-size buffer)
# while both sides stay at least this long: far above what encoders (224-336 px) and the
# model (max_side, 512 px by default) are given.
DECODE_SIDE = 2048

ImageInput = str | Path | bytes | Image.Image


def _describe(src: ImageInput) -> str:
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return "<PIL image>"
    return str(src)


def load_image(src: ImageInput, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a photo from a path, bytes or a PIL image as 8-bit RGB, upright.

    Raises ``ImageError`` with a one-line reason for a missing file, a file that is
    not an image, a truncated or corrupt image, or one larger than ``max_pixels``.
    """
    name = _describe(src)
    if isinstance(src, Image.Image):
        return _to_rgb(src, name, max_pixels)
    if isinstance(src, str | Path):
        path = Path(src)
        if not path.exists():
            raise ImageError(f"photo not found: {path}", "missing file")
        if not path.is_file():
            raise ImageError(f"not a file: {path}", "missing file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror or exc}", "missing file") from exc
    elif isinstance(src, bytes):
        data = src
    else:
        raise ImageError(
            f"unsupported photo type {type(src).__name__}: pass a path, bytes or a PIL image"
        )
    if not data:
        raise ImageError(f"empty file: {name}", "not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            return _to_rgb(im, name, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image (unrecognised format): {name}", "not an image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {name}", "decompression bomb") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image {name}: {exc}", "corrupt image") from exc


def _to_rgb(im: Image.Image, name: str, max_pixels: int) -> Image.Image:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(
            f"refused as a decompression bomb: {name} is {w}x{h} px, over {max_pixels:,} pixels",
            "decompression bomb",
        )
    if im.format == "JPEG":
        im.draft("RGB", (DECODE_SIDE, DECODE_SIDE))
    im.load()  # decode now so that truncation is reported here, not later
    im = bound_aspect(im)
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping everything to white.
        # (point() only takes 'I' and 'I;16': big-endian 16-bit TIFFs are 'I;16B'.)
        im = (im if im.mode in ("I", "I;16") else im.convert("I")).point(lambda v: v / 256).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB") if im.mode != "RGB" else im


def bound_aspect(im: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """``im`` with its long side centre-cropped to at most ``max_aspect`` times its short side."""
    w, h = im.size
    short = max(1, min(w, h))
    longest = int(short * max_aspect)
    if w > longest:
        left = (w - longest) // 2
        return im.crop((left, 0, left + longest, h))
    if h > longest:
        top = (h - longest) // 2
        return im.crop((0, top, w, top + longest))
    return im


def _dms_to_degrees(dms, ref: str | None) -> float:
    d, m, s = (float(x) for x in dms)
    value = d + m / 60.0 + s / 3600.0
    return -value if ref in ("S", "W") else value


def read_exif_gps(src: ImageInput) -> LatLon | None:
    """(lat, lon) from the photo's EXIF GPS block, or None when it has none or it is invalid.

    Invalid includes exactly (0, 0): cameras without a fix write zeros (see ``rag_store.coords``).
    """
    try:
        if isinstance(src, Image.Image):
            exif = src.getexif()
        else:
            data = Path(src).read_bytes() if isinstance(src, str | Path) else src
            with Image.open(io.BytesIO(data)) as im:
                exif = im.getexif()
        gps = exif.get_ifd(0x8825)
        if not gps or 2 not in gps or 4 not in gps:
            return None
        lat = _dms_to_degrees(gps[2], gps.get(1))
        lon = _dms_to_degrees(gps[4], gps.get(3))
    except Exception:  # noqa: BLE001 - a broken EXIF block just means "no GPS"
        return None
    point, _ = check_latlon(lat, lon)
    return point
