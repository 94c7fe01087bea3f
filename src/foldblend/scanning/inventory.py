"""Every image read once before training: readable or not and why, size, mode, content and perceptual hash
(the rows of folds/scan.csv; `scanning.run` adds duplicate groups, out-of-domain scores, the shift check
and the EDA page).

Finding a truncated JPEG at epoch 3 of fold 4 costs a run; finding it here costs a line in a table.
The table is cached by (relative path, file size, mtime_ns), so rescanning a 25k-image folder after
adding ten files reads ten files.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from foldblend.artifacts import write_csv
from foldblend.data.ood import STAT_COLUMNS, image_stats
from foldblend.data.read import ImageReadError, inspect_bytes, read_bytes

# The out-of-domain statistics ride along: the file is decoded here anyway, so nothing decodes it again.
# mtime_ns with bytes: later stages notice a file changed after the scan (data/freshness.py)
COLUMNS = (["image", "ok", "why", "format", "mode", "width", "height", "bytes", "mtime_ns", "md5", "phash"]
           + STAT_COLUMNS)
_CACHE_KEY = ["image", "bytes", "mtime_ns"]
# Perceptual hashes only look at a 32x32 thumbnail; decoding large JPEGs at reduced scale is ~4x faster.
PHASH_DRAFT = 256


def default_workers() -> int:
    """Threads: decoding releases the GIL, and a few extra threads hide file-system latency."""
    return min(16, (os.cpu_count() or 1) + 2)


def relative_name(path: Path, root: Path) -> str:
    """`path` relative to `root` as a posix string: the id every later stage uses for this image."""
    try:
        # abspath, not resolve(): a symlinked image folder must keep its names inside root.
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the scan root {root}; pass the folder that holds every image "
                         "as root") from None


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def scan_one(path: Path, image: str, root: Path | None = None) -> dict:
    """One row of the scan table for one file; never raises. A file linking out of `root` is unreadable."""
    row = dict(image=image, ok=False, why="", format="", mode="", width=0, height=0, bytes=-1, mtime_ns=-1, md5="",
               phash="", **{c: np.nan for c in STAT_COLUMNS})
    try:
        data = read_bytes(path, root)
    except ImageReadError as e:
        row["why"] = str(e)
        return row
    row["md5"] = hashlib.md5(data).hexdigest()
    check, rgb = inspect_bytes(data, image, draft_size=PHASH_DRAFT)
    row.update(ok=check.ok, why=check.why, format=check.format, mode=check.mode, width=check.width,
               height=check.height, bytes=len(data))
    if rgb is not None:
        row["phash"] = str(imagehash.phash(Image.fromarray(rgb)))
        if check.ok:
            row.update(zip(STAT_COLUMNS, image_stats(rgb)))
    return row


def _read_cache(cache_csv: Path | None) -> dict[tuple, dict]:
    if cache_csv is None or not Path(cache_csv).exists():
        return {}
    try:
        old = pd.read_csv(cache_csv, dtype=str, keep_default_na=False)
        missing = set(COLUMNS + _CACHE_KEY) - set(old.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        old["ok"] = old["ok"].map({"True": True, "False": False})
        if old["ok"].isna().any():
            raise ValueError("column ok must be True/False")
        for c in ("width", "height", "bytes", "mtime_ns"):
            old[c] = old[c].astype(np.int64)
        for c in STAT_COLUMNS:
            old[c] = pd.to_numeric(old[c].replace("", np.nan))
    except Exception as e:  # a stale or hand-edited cache is only a cache: rescan
        warnings.warn(f"{cache_csv}: ignoring unreadable scan cache ({e}); rescanning everything", stacklevel=3)
        return {}
    return {(r["image"], r["bytes"], r["mtime_ns"]): r for r in old.to_dict("records")}


def scan_images(paths: list[Path], root: Path, cache_csv: Path | None = None, workers: int | None = None,
                progress: bool = True) -> pd.DataFrame:
    """One row per path, in input order (columns `COLUMNS`); unreadable files get ok=False and a reason.

    With `cache_csv`, rows whose (relative path, size, mtime_ns) match the cache are reused and only
    new or changed files are read; the cache is rewritten atomically, and not at all when nothing changed.
    """
    paths = [Path(p) for p in paths]
    names = [relative_name(p, root) for p in paths]
    stats = [_stat(p) for p in paths]
    cache = _read_cache(cache_csv)
    rows: list[dict | None] = [None] * len(paths)
    todo = []
    for i, (name, (size, mtime)) in enumerate(zip(names, stats)):
        hit = cache.get((name, size, mtime)) if size >= 0 else None
        if hit is not None:
            rows[i] = hit
        else:
            todo.append(i)
    if todo:
        with ThreadPoolExecutor(workers or default_workers()) as pool:
            results = pool.map(lambda i: scan_one(paths[i], names[i], root), todo)
            for i, row in tqdm(zip(todo, results), total=len(todo), desc="scan images", unit="img",
                               disable=not progress):
                row["mtime_ns"] = stats[i][1]
                if row["bytes"] >= 0 and row["bytes"] != stats[i][0]:
                    row["mtime_ns"] = -1  # the file changed while we read it: never trust this row later
                rows[i] = row
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.astype({"ok": bool, "width": np.int64, "height": np.int64, "bytes": np.int64,
                          "mtime_ns": np.int64})
    if cache_csv is not None and (todo or len(cache) != len(table) or not Path(cache_csv).exists()):
        write_csv(cache_csv, table)
    return table[COLUMNS].reset_index(drop=True)


def scan_summary(df: pd.DataFrame, max_listed: int = 50) -> str:
    """A few lines for the terminal: counts, formats, modes, and every unreadable file with its reason."""
    n, bad = len(df), df[~df["ok"].astype(bool)]
    lines = [f"scanned {n} files: {n - len(bad)} ok, {len(bad)} unreadable"]
    good = df[df["ok"].astype(bool)]
    if len(good):
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in good["format"].value_counts().items()))
        lines.append("modes: " + ", ".join(f"{k} {v}" for k, v in good["mode"].value_counts().items()))
        lines.append(f"sizes: width {good['width'].min()}-{good['width'].max()}, "
                     f"height {good['height'].min()}-{good['height'].max()} "
                     f"(median {int(good['width'].median())}x{int(good['height'].median())})")
        dup = good["md5"].duplicated(keep=False).sum()
        if dup:
            lines.append(f"byte-identical files: {dup} (see dedup)")
    if len(bad):
        lines.append("unreadable files (left out of training; test ids still get a prediction):")
        for name, why in list(zip(bad["image"], bad["why"]))[:max_listed]:
            reason = why[len(name) + 2:] if why.startswith(f"{name}: ") else why
            lines.append(f"  {name}: {reason}")
        if len(bad) > max_listed:
            lines.append(f"  ... and {len(bad) - max_listed} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the scan stage
