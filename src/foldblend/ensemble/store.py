"""Which members a blend takes from oof/: every finished experiment, less those made on another split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def discover_members(oof_root: Path) -> list[str]:
    """Sub-folders of oof/ holding a finished member (oof.npz is written last); `_*` are blend outputs."""
    return sorted(p.name for p in Path(oof_root).iterdir()
                  if p.is_dir() and not p.name.startswith("_") and (p / "oof.npz").exists())


def split_members(oof_root: Path, folds_csv: Path) -> tuple[list[str], list[str]]:
    """(current, stale): members whose OOF rows are exactly folds.csv's images and folds, and the others.

    A member trained before the split or the competition changed would be refused by check_alignment
    (or, worse, blended against a different split); by default it is left out and named instead.
    """
    import pandas as pd

    names = discover_members(oof_root)
    if not Path(folds_csv).exists():
        return names, []
    folds = pd.read_csv(folds_csv, dtype={"image": str}, keep_default_na=False)
    held = folds["fold"].to_numpy() < 0
    trained, held_ids = folds[~held], folds.loc[held, "image"].to_numpy(str)
    current, stale = [], []
    for name in names:
        with np.load(Path(oof_root) / name / "oof.npz", allow_pickle=False) as z:
            same = (len(z["ids"]) == len(trained) and (z["ids"].astype(str) == trained["image"].to_numpy(str)).all()
                    and (z["fold"] == trained["fold"].to_numpy()).all())
        holdout_npz = Path(oof_root) / name / "holdout.npz"
        if holdout_npz.exists():
            with np.load(holdout_npz, allow_pickle=False) as z:
                same = same and z["ids"].astype(str).tolist() == held_ids.tolist()
        else:
            same = same and not len(held_ids)
        (current if same else stale).append(name)
    return current, stale
