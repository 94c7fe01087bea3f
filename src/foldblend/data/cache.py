"""Decode once: every image decoded, resized to size x size and stored in one `.npy` opened as a memmap.

A k-fold run reads each training image k x epochs times and each test image once per fold and TTA view;
decoding JPEGs every time makes the CPU, not the model, the bottleneck (see bench/data_throughput.py).
The cache file's name is a hash of the size and of every file's (name, byte size, mtime_ns), so an
edited, added or removed image gives a new file and a stale cache is never read.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from foldblend.artifacts import atomic_path, write_npz
from foldblend.data.read import ImageReadError, load_rgb
from foldblend.safety import remove

GREY = 128          # fill for unreadable images: the mean-ish value, harmless after normalisation
CACHE_VERSION = 2   # bump when decoding or resizing changes, so old caches are not reused (2: links out refused)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Squash to size x size: INTER_AREA when shrinking (no aliasing), INTER_CUBIC when enlarging."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if h * w >= size * size else cv2.INTER_CUBIC
    return cv2.resize(rgb, (size, size), interpolation=interp)


def cache_key(paths: list[Path], size: int, root: Path | None = None) -> str:
    """Hex digest of (version, size, and every path's name, byte size and mtime_ns, in order)."""
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": size}).encode())
    for p in paths:
        name = Path(os.path.relpath(p, root)).as_posix() if root is not None else Path(p).as_posix()
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{name}\0{stamp}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def cache_files(paths: list[Path], size: int, cache_dir: Path, root: Path | None = None) -> tuple[Path, Path]:
    stem = f"images_{size}px_n{len(paths)}_{cache_key(paths, size, root)}"
    return Path(cache_dir) / f"{stem}.npy", Path(cache_dir) / f"{stem}.meta.npz"


def _decode_into(out: np.ndarray, i: int, path: Path, size: int, root: Path | None = None) -> str:
    """Decode one image into out[i]; return "" or the reason it is unreadable (never raise)."""
    try:
        out[i] = resize_square(load_rgb(path, draft_size=size, root=root), size)
        return ""
    except ImageReadError as e:
        out[i] = GREY
        return str(e)
    except Exception as e:  # a decoder bug on one file must not cost the whole cache
        out[i] = GREY
        return f"{path}: {type(e).__name__}: {e}"


def cached_images(paths: list[Path], size: int, cache_dir: Path, workers: int | None = None, progress: bool = True,
                  *, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, ok): images uint8 (N, size, size, 3), a read-only memmap; ok (N,) bool.

    Built on first call (parallel decode), reopened in milliseconds afterwards. Unreadable images are
    constant grey with ok=False. Pass `root` to key the cache on paths relative to it, so a moved
    project keeps its cache, and to treat a file linking out of it as unreadable.
    """
    paths = [Path(p) for p in paths]
    if size < 1:
        raise ValueError(f"cache size must be a positive number of pixels, got {size}")
    images_file, meta_file = cache_files(paths, size, cache_dir, root)
    try:
        os.utime(meta_file)  # "last used": see remove_unused_caches
        ok, images = _open(images_file, meta_file)
    except FileNotFoundError:  # not built yet (or removed as unused by another run a moment ago)
        _build(paths, size, images_file, meta_file, workers, progress, root)
        ok, images = _open(images_file, meta_file)
    if images.shape != (len(paths), size, size, 3) or len(ok) != len(paths):
        raise RuntimeError(f"{images_file}: cache has shape {images.shape}, expected {(len(paths), size, size, 3)}; "
                           "delete the file and rerun")
    return images, ok


def _open(images_file: Path, meta_file: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(meta_file, allow_pickle=False) as meta:
        ok = meta["ok"].astype(bool)
    return ok, np.load(images_file, mmap_mode="r")


def remove_unused_caches(cache_dir: Path, since: float) -> list[Path]:
    """Delete the caches not used since `since` (a time.time()); returns the pixel files deleted.

    Every change to a file set or a new img_size builds a new cache (~5 GB for 25k images at 260 px);
    after a run of every fold config, the caches none of them used are obsolete. An open memmap
    survives its file's deletion on POSIX, so a process still reading one is unaffected.
    """
    gone = []
    for meta in Path(cache_dir).glob("images_*.meta.npz"):
        if meta.stat().st_mtime < since:
            pixels = meta.with_name(meta.name.replace(".meta.npz", ".npy"))
            remove(meta, inside=cache_dir)
            remove(pixels, inside=cache_dir)
            gone.append(pixels)
    return gone


def cache_failures(paths: list[Path], size: int, cache_dir: Path, root: Path | None = None) -> dict[str, str]:
    """{path: reason} for the images a built cache could not decode."""
    _, meta_file = cache_files(paths, size, cache_dir, root)
    with np.load(meta_file, allow_pickle=False) as meta:
        return {str(p): str(w) for p, w in zip(meta["paths"], meta["why"]) if w}


def _build(paths: list[Path], size: int, images_file: Path, meta_file: Path, workers: int | None,
           progress: bool, root: Path | None = None) -> None:
    n = len(paths)
    why = [""] * n
    # Pixels first, under a temporary name; the meta file is written only after the pixels are in place,
    # so the pair exists only when complete (an interrupted build leaves nothing to be mistaken for a cache).
    with atomic_path(images_file) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        _allocate(tmp)
        with ThreadPoolExecutor(workers) as pool:  # Pillow and cv2 release the GIL while decoding/resizing
            jobs = pool.map(lambda i: _decode_into(out, i, paths[i], size, root), range(n))  # noqa: F821 (del below)
            for i, reason in enumerate(tqdm(jobs, total=n, desc=f"cache {size}px", unit="img", disable=not progress)):
                why[i] = reason
        out.flush()
        del out
    write_npz(meta_file, ok=np.array([not w for w in why], bool), why=np.array(why, dtype=str),
              paths=np.array([p.as_posix() for p in paths], dtype=str))


def _allocate(path: Path) -> None:
    """Reserve the memmap's blocks now: on a full disk a sparse memmap dies of SIGBUS when a page is
    first written, while this raises an OSError (one clear line) before any decoding starts."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):  # not supported here: stay sparse
            e.filename = str(path)
            raise
    except AttributeError:  # no posix_fallocate on this platform
        pass
    finally:
        os.close(fd)
