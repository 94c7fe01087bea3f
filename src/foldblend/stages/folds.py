"""`foldblend folds`: folds/folds.csv (image, label, group, fold), made once and read by every later stage.

The scan table (rescanned when input/ changed), unreadable, out-of-domain and duplicate images left out as the
competition's settings say, groups from duplicates, semantic groups and the user's own, then the split
(`data.split`), the held-out list and the similarity arrays the blend's test-matched CV reads.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from foldblend.artifacts import write_csv
from foldblend.data.dedup import duplicate_groups, keep_one_per_group
from foldblend.data.find import Competition, load_competition
from foldblend.data.ood import ood_flags
from foldblend.data.split import HOLDOUT, classes_unseen_in_training, ensure_folds, holdout_setting
from foldblend.paths import Project
from foldblend.safety import remove, say_swept, sweep_temporaries
from foldblend.scanning.run import scan_table
from foldblend.scanning.shift_check import fold_groups, run_shift_check, write_similarity


def run_folds(project: Project, comp: Competition | None = None, progress: bool = True,
              holdout: float | None = None) -> pd.DataFrame:
    comp = comp or load_competition(project.input)
    say_swept(sweep_temporaries(project.folds_dir), project)
    table = scan_table(project, comp, progress)
    train = table[table["split"] == "train"].reset_index(drop=True)
    keep = train["ok"].to_numpy(bool).copy()  # pandas may hand out a read-only view
    reasons = np.where(keep, "", "unreadable").astype(object)
    flagged, threshold, how = ood_flags(train["ood"].to_numpy(float), comp.settings.ood_threshold)
    ood = {"mode": comp.settings.ood, "threshold": threshold if np.isfinite(threshold) else None, "how": how,
           "above_threshold": int((flagged & keep).sum())}
    if comp.settings.ood == "drop":
        reasons[flagged & keep] = "out_of_domain"
        keep &= ~flagged
    mode = comp.settings.dedup
    if mode == "keep_one":
        one = keep_one_per_group(train, duplicate_groups(train, comp.settings.dedup_distance))
        reasons[keep & ~one] = "duplicate"
        keep &= one
    kept = train[keep].reset_index(drop=True)
    # regrouped here: scan.csv's groups may come from another dedup_distance
    groups = duplicate_groups(kept, comp.settings.dedup_distance) if mode in ("group", "auto", "semantic") else None
    run_shift_check(project, comp, table, progress=progress, quiet_if_current=True)  # current: a no-op
    groups, grouping = fold_groups(project, comp, kept, groups, progress=progress)
    counts = pd.Series(reasons[~keep]).value_counts()
    print("left out of training: " + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none")
          + (f" (out-of-domain threshold {threshold:.3f}, {how})" if comp.settings.ood == "drop" else ""))
    left_out = [{"image": r.image, "label": r.label, "reason": why}
                | ({"ood": round(float(r.ood), 4)} if why == "out_of_domain" else {})
                for r, why in zip(train.itertuples(), reasons) if why]
    fraction = holdout_setting(comp, project.folds_csv, holdout)
    folds, _ = ensure_folds(kept[["image", "label"]], project.folds_csv, comp.settings.n_splits,
                            comp.settings.fold_seed, groups, holdout=fraction,
                            record={"ood": ood, "grouping": grouping, "left_out": left_out})
    _write_holdout_list(project, comp, folds)
    write_similarity(project, comp, folds, progress=progress)
    _warn_unseen_classes(folds)
    return folds


def _write_holdout_list(project: Project, comp: Competition, folds: pd.DataFrame) -> None:
    """folds/holdout.csv (path,label; paths relative to folds/): `foldblend evaluate --data folds/holdout.csv`."""
    path = project.folds_dir / "holdout.csv"
    held = folds[folds["fold"] == HOLDOUT]
    if held.empty:
        remove(path, inside=project.folds_dir)
        return
    base = Path(os.path.relpath(comp.root, project.folds_dir)).as_posix()
    new = pd.DataFrame({"path": [f"{base}/{p}" for p in held["image"]], "label": held["label"].to_numpy()})
    if not path.exists() or not pd.read_csv(path, dtype=str, keep_default_na=False).equals(new.astype(str)):
        write_csv(path, new)


def _warn_unseen_classes(folds: pd.DataFrame) -> None:
    unseen = classes_unseen_in_training(folds)
    if unseen:
        listed = ", ".join(f"{c} (fold {k})" for c, k in list(unseen.items())[:10])
        print(f"WARNING: {len(unseen)} class(es) have every image in one fold "
              f"(usually one duplicate group holds them all) : {listed}{' ...' if len(unseen) > 10 else ''}. "
              f"That fold's model never trains on "
              f"them and its CV counts them as misses. If these are not true duplicates, lower dedup_distance "
              f"in input/competition.yaml (or set dedup: keep_one / off)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                        help="set aside this fraction as a held-out test split (fold -1); overrides "
                             "competition.yaml, and is kept by later runs until changed (0 removes it)")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace, project: Project) -> None:
    run_folds(project, progress=not args.quiet, holdout=args.holdout)
