"""The split artifact: folds/folds.csv (image, label, group, fold), made once and read by every stage.

No later stage re-splits: OOF predictions, blend weights and reported CV are only honest when every
model saw exactly the same folds. Near-duplicate images share a `group`, and a group never spans two
folds, so a duplicate cannot leak from train into its own validation fold.

`fold` is 0..k-1 for the cross-validated rows and -1 for the held-out test split (`holdout: 0.2`):
rows no model trains on, no epoch or blend weight is chosen on, scored once after the blend. The
holdout is stratified and grouped like the folds, so a duplicate never sits on both sides.

`folds/folds.json` records what the split was made from (settings and a fingerprint of the input
table); `ensure_folds` reuses the split while those match, so rerunning the stage is a no-op and a
changed train set or setting produces new folds (and, downstream, retraining).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from foldblend.artifacts import read_json, write_csv, write_json
from foldblend.data.competition_config import MAX_HOLDOUT
from foldblend.data.find import Competition
from foldblend.errors import FoldblendError

FOLD_COLUMNS = ["image", "label", "group", "fold"]
HOLDOUT = -1          # the fold value of held-out test rows
MAX_HOLDOUT_PARTS = 20  # a holdout fraction is made of p of q grouped parts, q <= this
FIX = "run `foldblend folds`"


class FoldsError(FoldblendError):
    """folds.csv is missing or malformed, or the train set cannot be split; the message says what to do."""


def make_folds(table: pd.DataFrame, n_splits: int = 5, seed: int = 42,
               groups: np.ndarray | None = None, holdout: float = 0.0) -> pd.DataFrame:
    """Assign each row of `table` (image, label) a fold, stratified by label and, if given, grouped.

    Without groups (or with all-unique groups) this is StratifiedKFold: per-class counts per fold differ
    by at most one. With groups it is StratifiedGroupKFold: no group spans two folds. With `holdout`,
    that fraction of the rows is first set aside the same way (fold -1), and the rest is k-folded.
    """
    images = table["image"].astype(str).to_numpy()
    labels = table["label"].astype(str).to_numpy()
    n = len(table)
    if n_splits < 2:
        raise FoldsError(f"n_splits must be at least 2, got {n_splits}")
    group = _group_codes(groups, n)
    fold = np.full(n, HOLDOUT, dtype=np.int64)
    held = holdout_rows(labels, group, holdout, seed) if holdout > 0 else np.zeros(n, bool)
    fold[~held] = _kfold(labels[~held], group[~held], n_splits, seed)
    return pd.DataFrame({"image": images, "label": labels, "group": group, "fold": fold})


def holdout_rows(labels: np.ndarray, group: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of a held-out test split: about `fraction` of them, stratified by label, whole groups only.

    The fraction is taken as p of q parts of a StratifiedGroupKFold (0.2 = 1 of 5, 0.3 = 3 of 10,
    q <= 20), so it is grouped and stratified as the folds are. A class that would have no image left
    to train on keeps all of its images in training.
    """
    part = Fraction(fraction).limit_denominator(MAX_HOLDOUT_PARTS)
    p, q = part.numerator, part.denominator
    n_groups = len(np.unique(group))
    if p == 0:
        raise FoldsError(f"holdout {fraction} is below 1/{MAX_HOLDOUT_PARTS}; use 0 (none) or at least "
                         f"{1 / MAX_HOLDOUT_PARTS:g}")
    if n_groups < q:
        raise FoldsError(f"holdout {fraction} needs at least {q} distinct image groups, found {n_groups}; add "
                         f"images or lower holdout in input/competition.yaml")
    held = np.zeros(len(labels), bool)
    for j, (_, rows) in enumerate(_splits(labels, group, q, seed)):
        if j < p:
            held[rows] = True
    for c in np.unique(labels):
        if not (labels[~held] == c).any():  # held out entirely: no model could learn it
            held[np.isin(group, group[labels == c])] = False
    return held


def _kfold(labels: np.ndarray, group: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    n = len(labels)
    if n < n_splits:
        raise FoldsError(f"only {n} train image(s) for {n_splits} folds; add training images or lower n_splits "
                         "(or holdout) in input/competition.yaml")
    counts = pd.Series(labels).value_counts()
    small = counts[counts < n_splits]
    if len(small):
        warnings.warn(f"{len(small)} class(es) have fewer images than n_splits={n_splits}, so some folds "
                      f"validate none of them: {', '.join(f'{c} ({k})' for c, k in small.items())}", stacklevel=2)
    n_groups = len(np.unique(group))
    if n_groups < n_splits:
        raise FoldsError(f"only {n_groups} distinct image group(s) for {n_splits} folds; lower n_splits "
                         "or set dedup: off in input/competition.yaml")
    fold = np.full(n, -1, dtype=np.int64)
    for k, (_, valid) in enumerate(_splits(labels, group, n_splits, seed)):
        fold[valid] = k
    return fold


def _splits(labels: np.ndarray, group: np.ndarray, n_splits: int, seed: int) -> list:
    """scikit-learn's stratified split into n_splits parts, grouped (StratifiedGroupKFold) unless every
    row is its own group (StratifiedKFold: the same kind of split, and fast)."""
    with warnings.catch_warnings():  # callers warn about small classes by name; sklearn's warning says less
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        if len(np.unique(group)) == len(labels):
            return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)),
                                                                                          labels))
        return list(StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)),
                                                                                           labels, group))


def assign_folds(labels, groups, n_splits: int, seed: int) -> np.ndarray:
    """The fold of each row as `make_folds` assigns it (stratified, grouped), for a split not written to disk:
    the shift check tries many groupings before the folds stage makes one."""
    labels = np.asarray(labels).astype(str)
    return _kfold(labels, _group_codes(groups, len(labels)), n_splits, seed)


def _group_codes(groups, n: int) -> np.ndarray:
    """Groups as 0..G-1 in order of first appearance, so equal partitions give equal files and hashes."""
    if groups is None:
        return np.arange(n, dtype=np.int64)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise FoldsError(f"groups has {len(groups)} entries for {n} train images")
    return pd.factorize(groups)[0].astype(np.int64)


def fold_class_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and fold (columns, the held-out split last), with totals: what `folds` prints."""
    fold = df["fold"].map(lambda k: "holdout" if k == HOLDOUT else k)
    counts = pd.crosstab(df["label"], fold, margins=True, margins_name="all")
    return counts[[c for c in counts.columns if c not in ("holdout", "all")]
                  + [c for c in ("holdout", "all") if c in counts.columns]]


def _hash_frame(df: pd.DataFrame) -> str:
    text = df.astype(str).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def folds_fingerprint(df: pd.DataFrame) -> str:
    """A stable hash of the split's content; a model trained on other folds must be retrained."""
    return _hash_frame(df[FOLD_COLUMNS])


def table_fingerprint(table: pd.DataFrame, groups: np.ndarray | None = None) -> str:
    """A stable hash of what a split is made from: images, labels and the grouping."""
    return _hash_frame(pd.DataFrame({"image": table["image"].astype(str).to_numpy(),
                                     "label": table["label"].astype(str).to_numpy(),
                                     "group": _group_codes(groups, len(table))}))


def write_folds(df: pd.DataFrame, path: str | Path) -> None:
    _check_columns(df, Path(path))
    write_csv(path, df[FOLD_COLUMNS])


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read and validate folds.csv; labels stay strings even when a class is called "NA" or "1"."""
    path = Path(path)
    if not path.is_file():
        raise FoldsError(f"{path}: not found; {FIX} to make the split")
    try:
        df = pd.read_csv(path, dtype={"image": str, "label": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise FoldsError(f"{path}: unreadable ({e}); delete it and {FIX}") from e
    _check_columns(df, path)
    for col in ("group", "fold"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise FoldsError(f"{path}: column {col!r} must hold integers; delete the file and {FIX}")
    n_splits = int(df["fold"].max()) + 1 if len(df) else 0
    if n_splits < 1 or df["fold"].min() < HOLDOUT or set(df["fold"]) - {HOLDOUT} != set(range(n_splits)):
        raise FoldsError(f"{path}: folds must be 0..k-1 with every fold used (and -1 for held-out rows); "
                         f"delete the file and {FIX}")
    return df[FOLD_COLUMNS]


def _check_columns(df: pd.DataFrame, path: Path) -> None:
    missing = [c for c in FOLD_COLUMNS if c not in df.columns]
    if missing:
        raise FoldsError(f"{path}: missing column(s) {missing} (need {FOLD_COLUMNS}); {FIX}")


def settings_path(folds_path: str | Path) -> Path:
    """folds/folds.csv -> folds/folds.json, the sidecar recording what the split was made from."""
    return Path(folds_path).with_suffix(".json")


def ensure_folds(table: pd.DataFrame, path: str | Path, n_splits: int = 5, seed: int = 42,
                 groups: np.ndarray | None = None, verbose: bool = True, holdout: float = 0.0,
                 record: dict | None = None) -> tuple[pd.DataFrame, bool]:
    """Return (folds, changed): reuse `path` while its sidecar matches the inputs, else make and write new ones.

    The sidecar is written after folds.csv, so a kill between the two leaves a split that is not trusted
    and is remade on the next run. `record` (what was left out and why) is kept in the sidecar too.
    """
    path = Path(path)
    wanted = {"n_splits": int(n_splits), "seed": int(seed), "table_fingerprint": table_fingerprint(table, groups)}
    if holdout > 0:  # absent when 0, so a split made before holdouts existed stays valid
        wanted["holdout"] = float(holdout)
    sidecar = settings_path(path)
    df = _reusable(path, sidecar, wanted)
    changed = df is None
    if changed:
        df = make_folds(table, n_splits=n_splits, seed=seed, groups=groups, holdout=holdout)
        write_folds(df, path)
    content = {**wanted, "folds_fingerprint": folds_fingerprint(df), "n_images": len(df),
               "n_holdout": int((df["fold"] == HOLDOUT).sum()), **(record or {})}
    if changed or read_json(sidecar) != json.loads(json.dumps(content, default=str)):
        write_json(sidecar, content)
    if verbose:
        n_groups = df["group"].nunique()
        n_held = int((df["fold"] == HOLDOUT).sum())
        print(f"{'wrote' if changed else 'reusing'} {path.name}: {len(df)} images, {n_splits} folds, seed {seed}"
              + (f", {n_groups} groups" if n_groups < len(df) else "")
              + (f"; held-out test split: {n_held} images (fold -1), never trained on" if n_held else ""))
        print(fold_class_counts(df).to_string())
    return df, changed


def recorded_holdout(folds_path: str | Path) -> float:
    """The holdout fraction the current split was made with (0 when none or no split yet)."""
    return float((read_json(settings_path(folds_path)) or {}).get("holdout", 0.0))


def _reusable(path: Path, sidecar: Path, wanted: dict) -> pd.DataFrame | None:
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        df = read_folds(path)
    except (OSError, ValueError):
        return None  # unreadable or hand-broken: remake rather than fail
    if any(saved.get(k) != v for k, v in wanted.items()) or saved.get("folds_fingerprint") != folds_fingerprint(df):
        return None
    return df


# ----------------------------------------------------------------------------- the folds stage

def holdout_setting(comp: Competition, folds_csv: Path, override: float | None = None) -> float:
    """The holdout fraction: the command line's, else competition.yaml's, else the current split's.

    A split is made once: `foldblend folds --holdout 0.2` keeps its holdout on later runs (run.sh's
    plain `foldblend folds` included) until another value is given here or in competition.yaml.
    """
    if override is not None:
        if not 0 <= override <= MAX_HOLDOUT:
            raise FoldsError(f"--holdout must be a fraction in [0, {MAX_HOLDOUT}], got {override}")
        return float(override)
    if "holdout" in comp.configured:
        return float(comp.settings.holdout)
    return recorded_holdout(folds_csv)


def classes_unseen_in_training(folds: pd.DataFrame) -> dict[str, int]:
    """Classes whose every image sits in one fold: that fold's model is scored on a class it never saw."""
    folds = folds[folds["fold"] != HOLDOUT]
    counts = pd.crosstab(folds["label"], folds["fold"])
    whole = counts.eq(counts.sum(axis=1), axis=0) & (counts.sum(axis=1) > 1).to_numpy()[:, None]
    return {str(c): int(counts.columns[whole.loc[c].to_numpy()][0]) for c in counts.index[whole.any(axis=1)]}
