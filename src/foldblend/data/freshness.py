"""Is what a stage relies on still about the files in input/? File sizes and mtimes say, cheaply.

The scan records each file's size and mtime; a file replaced under its name after the scan makes the
scan's content hashes (and so the training signature) lie, and `train` alone would skip the fold as
"finished earlier". A member records a digest of the test files it predicted, so `submit` alone
notices test images replaced after the predictions. One `stat` per file: 25k files in well under a
second.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from foldblend.errors import FoldblendError


class StaleError(FoldblendError):
    """Input files changed after the stage that describes them ran; the message names the command."""


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def changed_since_scan(scan_csv: Path, root: Path, images: list[str]) -> list[str]:
    """The images (relative names) whose size or mtime differ from the scan's record, or that it lacks.

    Every image counts as changed when the scan is missing or older than this check (no mtime column).
    """
    scan_csv = Path(scan_csv)
    if not scan_csv.is_file():
        return list(images)
    try:
        scan = pd.read_csv(scan_csv, usecols=["image", "bytes", "mtime_ns"], dtype=str, keep_default_na=False)
        recorded = {name: (int(size), int(mtime)) for name, size, mtime in scan.itertuples(index=False)}
    except (ValueError, OSError, pd.errors.ParserError):  # unreadable or hand-edited: describes nothing
        return list(images)
    changed = []
    for image in images:
        was = recorded.get(image)
        size, mtime = _stamp(Path(root) / image)
        # bytes is -1 for a file the scan could not read: its mtime alone says whether it changed since
        if was is None or was[1] < 0 or mtime != was[1] or (was[0] >= 0 and size != was[0]):
            changed.append(image)
    return changed


def require_current_scan(scan_csv: Path, root: Path, images: list[str], then: str) -> None:
    """Raise StaleError naming the files and the commands when the scan no longer describes `images`."""
    changed = changed_since_scan(scan_csv, root, images)
    if not changed:
        return
    if not Path(scan_csv).is_file():
        raise StaleError(f"{scan_csv}: not found; run `foldblend scan` and `foldblend folds` before {then}")
    raise StaleError(f"{len(changed)} input file(s) changed or added since the scan ({Path(scan_csv).name}), e.g. "
                     f"{', '.join(changed[:3])}: run `foldblend scan` and `foldblend folds`, then {then} again")


def files_digest(root: Path, ids: list[str], images: list[str]) -> str:
    """A digest of (id, file, size, mtime) for each file: it changes when any file is replaced."""
    h = hashlib.sha256()
    for id_, image in zip(ids, images):
        size, mtime = _stamp(Path(root) / image)
        h.update(f"{id_}\0{image}\0{size}\0{mtime}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def digest_of_test_files(comp) -> str:
    """The digest of a competition's test files, recorded by each member and checked by `submit`."""
    return files_digest(comp.root, list(comp.test["id"]), list(comp.test["image"]))
