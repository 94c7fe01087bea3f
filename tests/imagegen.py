"""Tiny generated images for the data-intake tests: shapes, noise "photographs", and the awkward files
people really upload (broken, CMYK, EXIF-rotated, palette/RGBA/16-bit, 1x1, bomb headers, odd names)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def shapes(seed: int, size: int = 48) -> np.ndarray:
    """A flat-colour "illustration": a few filled shapes on a plain background (few distinct colours)."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(rng.integers(2, 5)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        r = int(rng.integers(size // 8, size // 3))
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), r, colour, -1)
        else:
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    return img


def photo(seed: int, size: int = 48, noise: float = 25.0) -> np.ndarray:
    """A noisy "photograph": smooth colour gradients + random texture + gaussian sensor noise."""
    rng = np.random.default_rng(seed)
    low = rng.normal(128, 60, (4, 4, 3)).astype(np.float32)
    base = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    texture = cv2.resize(rng.normal(0, 30, (size // 3, size // 3, 3)).astype(np.float32), (size, size))
    img = base + texture + rng.normal(0, noise, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def scene(seed: int, size: int = 64) -> np.ndarray:
    """A structured image with distinct perceptual hash: a smooth random field plus shapes."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    over = shapes(seed + 10_000, size)
    mask = (over != over[0, 0]).any(axis=2)
    img[mask] = over[mask]
    return img


def natural(seed: int, size: int = 128) -> np.ndarray:
    """A photo-like image: random phases with a natural 1/f^1.5 amplitude spectrum, per channel."""
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size) ** 1.5
    channels = []
    for _ in range(3):
        x = np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((size, size)))))
        channels.append((x - x.mean()) / x.std())
    return np.clip(np.stack(channels, -1) * 50 + 128, 0, 255).astype(np.uint8)


def shifted(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Translate by (dx, dy) pixels, replicating the border (a 1-2 px re-crop)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REPLICATE)


def encode(img: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def save(path: Path, img: np.ndarray, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF"}[path.suffix.lower()]
    path.write_bytes(encode(img, fmt, **kw))
    return path


def cmyk_jpeg(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).convert("CMYK").save(path, format="JPEG", quality=95)
    return path


def exif_rotated_jpeg(path: Path, img: np.ndarray, orientation: int = 6) -> Path:
    """Store `img` as-is with an EXIF orientation tag: a correct reader shows it rotated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def palette_png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="PNG")
    return path


def rgba_png(path: Path, img: np.ndarray, alpha: int = 0) -> Path:
    """An RGBA PNG whose left half has alpha `alpha` (0 = fully transparent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full(img.shape[:2], 255, np.uint8)
    a[:, : img.shape[1] // 2] = alpha
    Image.fromarray(np.dstack([img, a]), mode="RGBA").save(path, format="PNG")
    return path


def gray16_png(path: Path, values: np.ndarray) -> Path:
    """A 16-bit grayscale PNG (values uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path, format="PNG")
    return path


def truncated(path: Path, img: np.ndarray, keep: float = 0.5) -> Path:
    data = encode(img, "JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def junk_files(folder: Path) -> list[Path]:
    """The non-images that sit in real upload folders."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, data in {".DS_Store": b"\0\0\0\1Bud1" + bytes(64), "Thumbs.db": b"\xd0\xcf\x11\xe0" + bytes(64),
                       "notes.txt": b"hello, these are my notes\n", "empty.jpg": b"",
                       "text_named.png": b"not really a png\n"}.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out
