"""Write predictions in the competition's own sample-submission format, and keep a log of every file.

The sample submission is the specification: its header, row order and id spelling are reproduced
exactly, and a file is validated before it is written and again after, because a malformed CSV costs a
daily submission. Files are never overwritten, and `submissions/log.csv` describes every file on disk,
even after a kill (`submission_log`).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from foldblend.data.tables import read_table
from foldblend.safety import check_plain_name, create_temporary, remove, say_swept, sweep_temporaries
from foldblend.submission import log as sublog
from foldblend.submission.log import SubmissionError

FORMATS = ("label", "probs", "class_id", "positive_prob")
ROW_SUM_TOLERANCE = 1e-6


def read_sample(path: str | Path) -> pd.DataFrame:
    """Read a CSV exactly as written: every cell a string, nothing turned into NaN (strict: data.tables)."""
    return read_table(path, "CSV file")


def _is_int_text(values) -> bool:
    return len(values) > 0 and all(v.strip().lstrip("-").isdigit() for v in values)


def detect_format(sample: pd.DataFrame, classes: list[str]) -> str:
    """`probs` if the target columns are the class names; else one target column holding integer
    placeholders (while the class names are not all integers) means `class_id`; else `label`."""
    targets = list(sample.columns[1:])
    if not targets:
        raise SubmissionError(f"the sample has only the id column {sample.columns[0]!r}; it needs a target column")
    if len(targets) > 1:
        if sorted(targets) != sorted(classes):
            raise SubmissionError(f"the sample has {len(targets)} target columns but they are not the class names: "
                                  f"missing {sorted(set(classes) - set(targets))}, "
                                  f"unknown {sorted(set(targets) - set(classes))}")
        return "probs"
    values = sample[targets[0]].tolist()
    if _is_int_text(values) and not _is_int_text(list(classes)):
        return "class_id"
    if _is_fraction_text(values) and not _numbers_among(values, classes):
        # e.g. dogs-vs-cats `id,label` filled with 0.5: one probability column, not class names
        if len(classes) != 2:
            raise SubmissionError(f"the sample's {targets[0]!r} column holds probabilities ({values[0]}) but there "
                                  f"are {len(classes)} classes; set submission_format in input/competition.yaml")
        return "positive_prob"
    return "label"


def _numbers_among(values, classes) -> bool:
    """Whether every placeholder is a class name, compared as numbers where both parse (0.5 == "0.50")."""
    def number(v):
        try:
            return float(v)
        except ValueError:
            return v
    names = {number(c) for c in map(str, classes)}
    return all(number(v) in names for v in values)


def _is_fraction_text(values) -> bool:
    """Probabilities as placeholders: all in [0, 1] and at least one strictly between (0.5, not 1.0)."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return False
    return (len(numbers) > 0 and all(0.0 <= x <= 1.0 for x in numbers)
            and any(0.0 < x < 1.0 for x in numbers))


def _format_prob(p: float) -> str:
    # 10 significant digits: rows of 100+ classes still sum to 1 far inside the 1e-6 check
    return f"{p:.10g}"


def build_frame(sample: pd.DataFrame, test_ids: np.ndarray, probs: np.ndarray, classes: list[str],
                fmt: str) -> pd.DataFrame:
    """The submission as strings: the sample's ids and columns, our predictions aligned by id."""
    id_col = sample.columns[0]
    sample_ids = sample[id_col].astype(str)
    position = pd.Index(np.asarray(test_ids).astype(str))
    if position.has_duplicates:
        raise SubmissionError(f"test ids repeat: {position[position.duplicated()].tolist()[:5]}")
    rows = position.get_indexer(sample_ids)
    if (rows < 0).any():
        missing = sample_ids[rows < 0].tolist()
        raise SubmissionError(f"{len(missing)} sample ids have no prediction, e.g. {missing[:10]}")
    probs = np.asarray(probs, dtype=np.float64)[rows]
    _check_columns_fit(sample, classes, fmt)
    out = sample.copy()
    if fmt == "probs":
        probs = probs / probs.sum(axis=1, keepdims=True)
        for col in sample.columns[1:]:
            out[col] = [_format_prob(p) for p in probs[:, classes.index(col)]]
    elif fmt == "label":
        out[sample.columns[1]] = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    elif fmt == "class_id":
        out[sample.columns[1]] = probs.argmax(axis=1).astype(str)
    elif fmt == "positive_prob":  # binary: the probability of the second class (index 1)
        if len(classes) != 2:
            raise SubmissionError(f"format 'positive_prob' needs 2 classes, not {len(classes)}")
        out[sample.columns[1]] = [_format_prob(p) for p in probs[:, 1] / probs.sum(axis=1)]
    else:
        raise SubmissionError(f"unknown submission format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return out


def _check_columns_fit(sample: pd.DataFrame, classes: list[str], fmt: str) -> None:
    targets = list(sample.columns[1:])
    if fmt == "probs" and sorted(targets) != sorted(classes):
        raise SubmissionError(f"format 'probs' needs one sample column per class; the sample has {targets}")
    if fmt in ("label", "class_id", "positive_prob") and len(targets) != 1:
        raise SubmissionError(f"format {fmt!r} needs exactly one target column; the sample has {targets}")


def check_frame(frame: pd.DataFrame, sample: pd.DataFrame, classes: list[str], fmt: str) -> None:
    """Raise SubmissionError unless `frame` is a valid submission for this sample, in this format."""
    if list(frame.columns) != list(sample.columns):
        raise SubmissionError(f"header {list(frame.columns)} differs from the sample's {list(sample.columns)}")
    ids, expected = frame.iloc[:, 0].tolist(), sample.iloc[:, 0].tolist()
    if len(set(expected)) != len(expected):
        raise SubmissionError("the sample submission itself repeats ids")
    if ids != expected:
        bad = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        raise SubmissionError(f"ids differ from the sample's at row {bad} ({len(ids)} rows vs {len(expected)})")
    targets = frame.iloc[:, 1:]
    if fmt == "label":
        unknown = sorted(set(targets.iloc[:, 0]) - set(classes))
        if unknown:
            raise SubmissionError(f"labels that are not classes: {unknown[:10]}")
    elif fmt == "class_id":
        values = targets.iloc[:, 0].tolist()
        if not _is_int_text(values) or not all(0 <= int(v) < len(classes) for v in values):
            raise SubmissionError(f"class ids must be integers in [0, {len(classes)})")
    elif fmt == "probs":
        _check_probabilities(targets)
    elif fmt == "positive_prob":
        _check_probabilities(targets, rows_sum_to_one=False)
    else:
        raise SubmissionError(f"unknown submission format {fmt!r}")


def _check_probabilities(targets: pd.DataFrame, rows_sum_to_one: bool = True) -> None:
    try:
        values = targets.to_numpy(dtype=np.float64)
    except ValueError as e:
        raise SubmissionError(f"probabilities are not numbers: {e}") from None
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise SubmissionError("probabilities must be finite and in [0, 1]")
    worst = np.abs(values.sum(axis=1) - 1.0).max(initial=0.0)
    if rows_sum_to_one and worst > ROW_SUM_TOLERANCE:
        raise SubmissionError(f"probability rows must sum to 1 (worst row is off by {worst:.2e})")


def validate_submission(path: str | Path, sample: pd.DataFrame, classes: list[str], fmt: str) -> None:
    """Re-read a written file as Kaggle will and check it."""
    check_frame(read_sample(path), sample, classes, fmt)


def _free_name(out_dir: Path, stem: str) -> Path:
    candidate, n = out_dir / f"{stem}.csv", 1
    while candidate.exists():
        n += 1
        candidate = out_dir / f"{stem}_{n}.csv"
    return candidate


def _write_new(frame: pd.DataFrame, out_dir: Path, stem: str, row: dict, check) -> Path:
    """Write and validate a temporary file, log it as pending, hard-link it under the first free name,
    log it as written. The link fails rather than replace a file that appeared meanwhile, so an earlier
    submission is never overwritten, and the name only ever points at a complete, valid file."""
    tmp = create_temporary(out_dir / f"{stem}.csv")
    try:
        frame.to_csv(tmp, index=False, lineterminator="\n")
        check(tmp)  # the same inode the name will point at: validated before it has a name
        while True:
            target = _free_name(out_dir, stem)
            sublog.append(out_dir, {**row, "file": target.name, "status": sublog.PENDING})
            try:
                os.link(tmp, target)
            except FileExistsError:
                sublog.drop(out_dir, target.name)
                continue
            sublog.set_status(out_dir, target.name, sublog.WRITTEN)
            return target
    finally:
        remove(tmp, inside=out_dir)


def _identical_earlier(frame: pd.DataFrame, out_dir: Path, stem: str) -> Path | None:
    """An earlier file of this name (or its _2, _3 ... versions) with byte-identical content, if any."""
    text = frame.to_csv(index=False, lineterminator="\n").encode()
    versions = [out_dir / f"{stem}.csv"] + [p for p in out_dir.glob(f"{stem}_*.csv")
                                           if p.stem[len(stem) + 1:].isdigit()]
    for path in versions:
        if path.exists() and path.stat().st_size == len(text) and path.read_bytes() == text:
            return path
    return None


def write_submission(sample: pd.DataFrame, test_ids: np.ndarray, probs: np.ndarray, classes: list[str],
                     out_dir: Path, name: str, cv: float | None, info: dict, fmt: str | None = None,
                     name_score: tuple[str, float] | None = None) -> Path:
    """Validate, write `<name>_cv<cv>.csv` (never overwriting), re-validate, log. Returns the path.

    `name_score` ("exp", 0.71) puts another number in the name instead of the CV (`<name>_exp0.7100.csv`):
    the expected test score, when the scan warns that the CV is optimistic."""
    classes = [str(c) for c in classes]
    check_plain_name(name, "submission name (--name)")
    fmt = fmt or detect_format(sample, classes)
    frame = build_frame(sample, test_ids, probs, classes, fmt)
    check_frame(frame, sample, classes, fmt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (f"{name}_{name_score[0]}{name_score[1]:.4f}" if name_score is not None else
            f"{name}_cv{cv:.4f}" if cv is not None else name)
    with sublog.locked(out_dir):
        say_swept(sweep_temporaries(out_dir))
        for note in sublog.reconcile(out_dir):
            print(f"note: {note}")
        same = _identical_earlier(frame, out_dir, stem)
        if same is not None:  # rerunning an unchanged pipeline is a no-op, not a new file
            print(f"unchanged: {same.name} already holds exactly these predictions")
            return same
        row = {"time": sublog.now(), "cv": "" if cv is None else f"{cv:.6f}", "lb": "", "format": fmt, **info}
        return _write_new(frame, out_dir, stem, row, lambda tmp: validate_submission(tmp, sample, classes, fmt))


# ----------------------------------------------------------------------------- upload

def kaggle_command(competition: str, file: str | Path, message: str) -> list[str]:
    return ["kaggle", "competitions", "submit", "-c", competition, "-f", str(file), "-m", message]


def _kaggle_configured() -> bool:
    """Credentials exist (we only look for them; the kaggle CLI reads them itself)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config_dir / "kaggle.json").exists()


def upload(competition: str, file: str | Path, message: str) -> bool:
    """Submit with the official kaggle CLI when it is installed and configured; else print the command."""
    command = kaggle_command(competition, file, message)
    if shutil.which("kaggle") and _kaggle_configured():
        subprocess.run(command, check=True)
        return True
    print("kaggle CLI not installed or not configured; to submit, run:\n  " + shlex.join(command))
    return False


# ----------------------------------------------------------------------------- CLI
