"""Reading images as people actually upload them, always as RGB uint8 (H, W, 3).

Files are decoded from bytes (OpenCV's `imread` fails on some non-ASCII paths). Pillow handles what
OpenCV gets wrong or cannot read: EXIF orientation, CMYK JPEG, palette/LA/RGBA PNG (composited on one
background), 16-bit PNG, WebP/TIFF/BMP.

The pixel-count guard runs on the header, before any pixel is decoded, so a 1 kB "decompression bomb"
(a PNG claiming 100k x 100k pixels) costs nothing and is reported, never allocated.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from foldblend.errors import FoldblendError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white, for every image alike
MAX_PIXELS = 50_000_000       # larger than any sane competition photo; guards RAM and decode time
MIN_SIDE = 2                  # a 1-pixel-wide image carries no information and breaks resizers/hashes


class ImageReadError(FoldblendError):
    """An image file could not be decoded; the message names the file, says why and what to do."""


def is_image_name(path: str | Path) -> bool:
    """True for file names with an image extension, in any case (`IMG_001.JPG` counts)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def header_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, no pixel decoded; None when it is not an image Pillow
    can identify (decoding it would then fail the same way, before allocating anything)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # UnidentifiedImageError, DecompressionBombError, OSError, a decoder plugin's bug
        return None


@dataclass(frozen=True)
class ImageCheck:
    """What `check_image` learnt about one file; `why` is "" when `ok`."""

    ok: bool
    why: str
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    bytes: int = 0


def _open_checked(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Open (header only) and enforce the pixel budget before anything is decoded."""
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes); re-download it or delete it")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name}: absurdly large image header ({e}); decompression-bomb guard, "
                             "remove the file or downscale it") from e
    except Exception as e:  # UnidentifiedImageError for .DS_Store, Thumbs.db, notes.txt renamed .jpg...
        raise ImageReadError(f"{name}: not a readable image ({type(e).__name__}: {e}); "
                             "remove it from the image folder") from e
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageReadError(f"{name}: {w}x{h} = {w * h / 1e6:.0f} megapixels exceeds the limit of "
                             f"{max_pixels / 1e6:.0f} (decompression-bomb guard); downscale the file")
    return im


def decode_rgb(data: bytes, name: str = "<bytes>", *, max_pixels: int | None = MAX_PIXELS,
               draft_size: int | None = None) -> np.ndarray:
    """Decode image bytes to RGB uint8, applying EXIF orientation and compositing transparency.

    `draft_size` lets a JPEG decoder skip work (DCT scaling to 1/2..1/8) while keeping both sides at
    least `draft_size` pixels: callers that will shrink to `draft_size` anyway get the same picture
    several times faster.
    """
    im = _open_checked(data, name, max_pixels)
    try:
        with im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb_array(im, name)
    except ImageReadError:
        raise
    except Exception as e:  # Pillow raises many types for broken files
        raise ImageReadError(f"{name}: cannot decode ({type(e).__name__}: {e}); the file is probably "
                             "truncated or corrupt, re-download it or delete it") from e


def _to_rgb_array(im: Image.Image, name: str = "<bytes>") -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):
        # 16-bit: a fixed scale (65535 -> 255) so a dark 16-bit image stays dark, like any viewer shows it.
        a = np.asarray(im).astype(np.float32) / 257.0
        return _gray3(a)
    if mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode == "F" and a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        elif a.size and np.nanmax(a) > 255:  # 32-bit containers usually hold 16-bit samples
            a = a / 257.0
        return _gray3(np.nan_to_num(a))
    if mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")  # tRNS chunk / GIF transparent index
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, BACKGROUND + (255,))
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")  # CMYK (Adobe-inverted handled by Pillow), L, 1, YCbCr, P
        except Exception as e:
            raise ImageReadError(f"{name}: unsupported colour mode {im.mode!r}; convert it to RGB") from e
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _gray3(a: np.ndarray) -> np.ndarray:
    a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(a[..., None], 3, axis=2))


def resolves_inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path`, with every symbolic link followed, lies inside `root` (also resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def read_bytes(path: str | Path, root: str | Path | None = None) -> bytes:
    """The file's bytes; with `root`, a file that resolves outside it (a symlink out) is refused."""
    path = Path(path)
    if root is not None and not resolves_inside(path, root):
        raise ImageReadError(f"{path}: a symbolic link to {os.path.realpath(path)}, outside {Path(root).name}/; "
                             f"copy the file itself into {Path(root).name}/")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e}); check it exists and is readable") from e


def load_rgb(path: str | Path, *, max_pixels: int | None = MAX_PIXELS,
             draft_size: int | None = None, root: str | Path | None = None) -> np.ndarray:
    """Read one file as RGB uint8 (H, W, 3); raises ImageReadError naming the file and the reason.
    With `root` (the competition's input folder), a file linking out of it is refused."""
    return decode_rgb(read_bytes(path, root), str(path), max_pixels=max_pixels, draft_size=draft_size)


def inspect_bytes(data: bytes, name: str, *, min_side: int = MIN_SIDE, max_pixels: int | None = MAX_PIXELS,
                  draft_size: int | None = None) -> tuple[ImageCheck, np.ndarray | None]:
    """Validate and decode in one pass: (check, rgb) with rgb None when not ok. Never raises."""
    fmt = mode = ""
    w = h = 0
    try:
        im = _open_checked(data, name, max_pixels)
        fmt, mode, (w, h) = im.format or "", im.mode, im.size
        try:
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF says rotate by 90: report as displayed
                w, h = h, w
        except Exception:
            pass  # a broken EXIF block is not a broken image; decode_rgb decides
        im.close()
        if min(w, h) < min_side:
            raise ImageReadError(f"{name}: {w}x{h} pixels is smaller than the minimum side of {min_side}; "
                                 "it is a placeholder or tracking pixel, delete it")
        rgb = decode_rgb(data, name, max_pixels=max_pixels, draft_size=draft_size)
    except ImageReadError as e:
        return ImageCheck(False, str(e), fmt, mode, w, h, len(data)), None
    except Exception as e:  # a bug in a decoder must not stop a 25k-image scan
        return ImageCheck(False, f"{name}: {type(e).__name__}: {e}", fmt, mode, w, h, len(data)), None
    return ImageCheck(True, "", fmt, mode, w, h, len(data)), rgb


def check_image(path: str | Path, min_side: int = MIN_SIDE, max_pixels: int | None = MAX_PIXELS) -> ImageCheck:
    """Fully decode `path` and report whether training can use it. Never raises (a missing file is not ok)."""
    try:
        data = read_bytes(path)
    except ImageReadError as e:
        return ImageCheck(False, str(e))
    return inspect_bytes(data, str(path), min_side=min_side, max_pixels=max_pixels)[0]
