"""`submissions/log.csv`: one row per CSV in submissions/, true after a kill and between concurrent runs.

A submission's row is written *before* its file gets its name, with status `pending`, and marked
`written` once the file is there; every reader and writer of the log first reconciles it with the
folder, under the folder's lock. So a SIGKILL at any moment leaves either no file and a pending row
(the row is dropped: the file never existed) or the file and a pending row (the row is marked
written: the file was linked from a complete, validated temporary). A CSV found in the folder without
a row (written by an older foldblend, or copied there) gets a row saying so.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from foldblend.artifacts import write_csv
from foldblend.data.tables import read_table
from foldblend.errors import FoldblendError
from foldblend.locks import hold

LOG_NAME = "log.csv"
LOCK_NAME = ".lock"
LOG_COLUMNS = ["file", "time", "cv", "lb", "format", "status"]
PENDING, WRITTEN, FOUND = "pending", "written", "found on disk"


class SubmissionError(FoldblendError):
    """A submission would not be accepted (or scored against the wrong rows), or the log cannot say what it is."""


def locked(out_dir: Path):
    """The submissions folder's lock: one run at a time reads-modifies-writes its log."""
    # a log update takes a fraction of a second: wait for another run's rather than fail
    return hold(Path(out_dir) / LOCK_NAME, f"{Path(out_dir).name}/{LOG_NAME}", fix="wait for it to finish",
                wait=60.0)


def read_log(out_dir: Path) -> pd.DataFrame:
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        return pd.DataFrame(columns=LOG_COLUMNS, dtype=str)
    log = read_table(path, "submissions log", "restore it, or move it away (a new log is started)")
    if "file" not in log.columns:
        raise SubmissionError(f"{path}: no 'file' column, so it is not foldblend's submissions log; move it away "
                       f"(a new log is started)")
    return log


def _write(out_dir: Path, log: pd.DataFrame) -> None:
    write_csv(Path(out_dir) / LOG_NAME, log.fillna(""), lineterminator="\n")


def _json_cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append(out_dir: Path, row: dict) -> None:
    """Add one row (columns are the union of old and new; written atomically). Hold `locked` around it."""
    log = read_log(out_dir)
    new = pd.DataFrame([{k: _json_cell(v) for k, v in row.items()}], dtype=str)
    _write(out_dir, pd.concat([log, new], ignore_index=True))


def set_status(out_dir: Path, file: str, status: str) -> None:
    log = read_log(out_dir)
    log.loc[log["file"] == file, "status"] = status
    _write(out_dir, log)


def drop(out_dir: Path, file: str) -> None:
    log = read_log(out_dir)
    _write(out_dir, log[log["file"] != file])


def _cv_in_name(name: str) -> str:
    m = re.search(r"_cv(\d+(?:\.\d+)?)", name)
    return m.group(1) if m else ""


def reconcile(out_dir: Path) -> list[str]:
    """Make the log describe exactly the CSVs in `out_dir` after an interrupted run; returns what it did.

    Hold `locked(out_dir)` around it.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    log = read_log(out_dir)
    status = log["status"].fillna("") if "status" in log else pd.Series([""] * len(log), index=log.index)
    exists = log["file"].map(lambda f: (out_dir / f).is_file()).astype(bool)
    pending = status == PENDING
    done, never = pending & exists, pending & ~exists
    logged = set(log["file"])
    found = sorted(p for p in out_dir.glob("*.csv")
                   if p.name != LOG_NAME and not p.name.startswith(".") and p.name not in logged and p.is_file())
    if not (done.any() or never.any() or found):
        return []
    notes = [f"{f}: written by a run that was interrupted before it logged it; logged now" for f in log["file"][done]]
    notes += [f"{f}: its run was interrupted before the file was written; its log row is dropped"
              for f in log["file"][never]]
    notes += [f"{p.name}: a CSV without a log row (copied here, or written by an older foldblend); logged now"
              for p in found]
    if done.any():
        log.loc[done, "status"] = WRITTEN
    log = log[~never]
    rows = [{"file": p.name, "time": datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).isoformat(
        timespec="seconds"), "cv": _cv_in_name(p.name), "lb": "", "format": "", "status": FOUND} for p in found]
    if rows:
        log = pd.concat([log, pd.DataFrame(rows, dtype=str)], ignore_index=True)
    _write(out_dir, log)
    return notes


def record_lb(out_dir: Path, file: str | Path, lb: float) -> dict:
    """Write a public-leaderboard score into the log row of `file` (matched by file name)."""
    out_dir = Path(out_dir)
    log_path = out_dir / LOG_NAME
    with locked(out_dir):
        for note in reconcile(out_dir):
            print(f"note: {note}")
        if not log_path.exists():
            raise SubmissionError(f"{log_path} does not exist: no submission was written there")
        log = read_log(out_dir)
        match = log["file"] == Path(file).name
        if not match.any():
            raise SubmissionError(f"{Path(file).name} is not in {log_path} (known: {log['file'].tolist()[-5:]}); "
                           f"name a file that `foldblend submit` wrote")
        log.loc[match, "lb"] = f"{lb:g}"
        _write(out_dir, log)
        return log[match].iloc[-1].to_dict()
