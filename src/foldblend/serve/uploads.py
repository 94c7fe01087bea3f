"""What people upload to the web app, turned into image files to predict, or into one line saying why not.

An upload is an image file, or a `.zip` of a folder of images. Zip members are copied (never by their
own names, so `../` in an archive cannot escape) into a work folder the caller owns, outside the
project; sizes are checked while copying, not trusted from the archive's header, so a zip bomb costs at
most the limit. Nothing here decodes pixels: `predict_images` does that, as for `foldblend predict`. But
each image's header is read first, and an image is passed on only while the pixels it declares fit what
is left of the request's pixel budget, so a request never decodes more than `max_pixels` in all, however
many images it holds and however many threads decode them (a few-kB PNG can declare 49 megapixels).
"""
from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from foldblend.data.read import IMAGE_EXTENSIONS, MAX_PIXELS, header_size, is_image_name
from foldblend.safety import remove

ACCEPTED = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one request: bytes of any uploaded file (and of a zip's images together), image count,
    and pixels its images declare in all (what decoding them can cost, about 10-20 bytes a pixel at its peak)."""

    max_bytes: int = 200 * 2**20
    max_images: int = 1000
    max_pixels: int = 200_000_000

    @property
    def max_mb(self) -> str:
        return f"{self.max_bytes / 2**20:g} MB"


@dataclass
class Uploads:
    """Files to predict, what the person calls each, and one line per upload that cannot be used."""

    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pixels: int = 0  # what the images passed on declare in their headers, together

    def add(self, path: Path, name: str) -> None:
        self.paths.append(path)
        self.names.append(name)


def _fits_pixels(path: Path, name: str, limits: UploadLimits, found: Uploads) -> bool:
    """Whether the image's header leaves it within the request's pixel budget (then charged to it), else one
    line. A header that cannot be read, or one over the per-image guard, is passed on uncharged: the decoder
    refuses it from that same header, before allocating a pixel."""
    size = header_size(path)
    if size is None or size[0] * size[1] > MAX_PIXELS:
        return True
    pixels = size[0] * size[1]
    left = limits.max_pixels - found.pixels
    if pixels > left:
        found.problems.append(f"{name}: left out, {size[0]}x{size[1]} is {pixels / 1e6:.3g} megapixels and this "
                              f"request has {max(left, 0) / 1e6:.3g} of its {limits.max_pixels / 1e6:.3g} megapixels "
                              f"left to decode; send it in another request (or raise --max-megapixels)")
        return False
    found.pixels += pixels
    return True


def _skipped_member(name: str) -> bool:
    """Folders, macOS resource forks and hidden files: never images, never worth a message."""
    parts = PurePosixPath(name).parts
    hidden = any(p.startswith(".") and p not in (".", "..") for p in parts)
    return name.endswith("/") or not parts or parts[0] == "__MACOSX" or hidden


def _copy_limited(src, dst: Path, budget: int) -> int:
    """Copy at most `budget` bytes; returns the bytes copied, or -1 when the source holds more."""
    copied = 0
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > budget:
                return -1
            out.write(chunk)
    return copied


def _add_zip(path: Path, name: str, workdir: Path, limits: UploadLimits, found: Uploads) -> None:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        found.problems.append(f"{name}: not a readable zip archive ({e}); zip the folder again and upload it")
        return
    with archive:
        members = sorted((m for m in archive.infolist() if not _skipped_member(m.filename)), key=lambda m: m.filename)
        others = [m.filename for m in members if not is_image_name(m.filename)]
        images = [m for m in members if is_image_name(m.filename)]
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            found.problems.append(f"{name}: ignored {len(others)} file(s) that are not images ({shown})")
        if not images:
            found.problems.append(f"{name}: no image files inside (expected {ACCEPTED})")
            return
        folder = Path(tempfile.mkdtemp(prefix="zip_", dir=workdir))
        budget = limits.max_bytes
        for i, member in enumerate(images):
            shown = f"{name}/{member.filename}"
            if len(found.paths) >= limits.max_images:
                found.problems.append(f"{name}: only the first {limits.max_images} images are classified "
                                      f"({len(images) - i} left out); split the archive or raise --max-images")
                return
            dst = folder / f"{i:06d}{PurePosixPath(member.filename).suffix.lower()}"
            try:
                with archive.open(member) as src:
                    copied = _copy_limited(src, dst, budget)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as e:  # corrupt or encrypted member
                found.problems.append(f"{shown}: cannot be unpacked ({e}); zip the folder again without a password")
                continue
            if copied < 0:
                remove(dst, inside=folder)
                found.problems.append(f"{name}: its images unpack to more than {limits.max_mb}; upload a smaller "
                                      f"archive (or raise --max-upload-mb)")
                return
            budget -= copied
            if _fits_pixels(dst, shown, limits, found):
                found.add(dst, shown)
            else:
                remove(dst, inside=folder)


def gather_uploads(files: list[str | Path], workdir: Path, limits: UploadLimits = UploadLimits()) -> Uploads:
    """The image files among `files` (zips unpacked into `workdir`), in upload order, with the problems.

    An upload's name is its file name (web uploads keep the name the person gave them); a zip member's
    is `archive.zip/inner/path.png`.
    """
    found = Uploads()
    for file in files:
        path = Path(file)
        name = path.name
        try:
            size = path.stat().st_size
        except OSError as e:
            found.problems.append(f"{name}: cannot be read ({e.strerror or e}); upload it again")
            continue
        if size > limits.max_bytes:
            found.problems.append(f"{name}: {size / 2**20:.1f} MB is over the {limits.max_mb} limit; "
                                  f"upload a smaller file (or raise --max-upload-mb)")
        elif path.suffix.lower() == ".zip":
            _add_zip(path, name, workdir, limits, found)
        elif not is_image_name(name):
            found.problems.append(f"{name}: not an image file (expected {ACCEPTED}, or a .zip of a folder of them)")
        elif len(found.paths) >= limits.max_images:
            found.problems.append(f"{name}: left out, only {limits.max_images} images are classified at once "
                                  f"(raise --max-images)")
        elif _fits_pixels(path, name, limits, found):
            found.add(path, name)
    return found

