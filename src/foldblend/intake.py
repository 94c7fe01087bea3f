"""The scan and folds stages: what every image is, which ones train, and the split they train in.

`run_scan` reads every train and test file once (cached by path, size and mtime), groups exact and
near duplicates, scores train images for being out of domain, writes folds/scan.csv and folds/eda.html,
and prints a report that names every problem. `run_folds` turns that into folds/folds.csv.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .artifacts import write_csv, write_json
from .competition import Competition, load_competition
from .dedup import duplicate_groups, duplicate_report, keep_one_per_group
from .eda import write_eda
from .folds import ensure_folds
from .ood import STAT_COLUMNS, ood_report, scores_from_stats
from .paths import Project
from .scan import scan_images, scan_summary


def run_scan(project: Project, comp: Competition | None = None, workers: int | None = None,
             progress: bool = True) -> pd.DataFrame:
    comp = comp or load_competition(project.input)
    print(comp.describe())
    paths = [comp.root / p for p in comp.train["image"]] + [comp.root / p for p in comp.test["image"]]
    table = scan_images(paths, comp.root, cache_csv=project.folds_dir / "scan_cache.csv", workers=workers,
                        progress=progress)
    n_train = len(comp.train)
    table["split"] = ["train"] * n_train + ["test"] * len(comp.test)
    table["label"] = list(comp.train["label"]) + [None] * len(comp.test)
    table["group"] = duplicate_groups(table, comp.settings["dedup_distance"])
    is_train = (table["split"] == "train").to_numpy()
    ok_train = is_train & table["ok"].to_numpy(bool)
    stats = table[STAT_COLUMNS].to_numpy(np.float64)
    scores = np.full(len(table), np.nan)
    if ok_train.sum() >= 3:
        scores[ok_train] = scores_from_stats(stats[ok_train])
    table["ood"] = scores
    write_csv(project.scan_csv, table)

    print(scan_summary(table))
    _print_imbalance(comp)
    report = duplicate_report(table, table["group"].to_numpy(), table["label"], ~is_train)
    write_json(project.folds_dir / "duplicates.json", report)
    _print_duplicates(report, comp.settings["dedup"])
    if ok_train.sum() >= 3:
        suspects = ood_report(table, scores, top=10, stats=stats)
        print(f"most out-of-domain train images (score; set ood_threshold in {comp.root.name}/competition.yaml "
              f"to leave out those above it):")
        for row in suspects.itertuples():
            print(f"  {row.score:.3f}  {row.image}  ({row.stands_out})")
    eda = write_eda(table, table["group"].to_numpy(), scores, table["label"], project.folds_dir / "eda.html",
                    comp.root)
    print(f"data report: {eda.relative_to(project.root)}")
    return table


def _print_imbalance(comp: Competition) -> None:
    counts = comp.train["label"].value_counts()
    ratio = counts.max() / max(counts.min(), 1)
    print(f"class counts: min {counts.min()} ({counts.idxmin()}), max {counts.max()} ({counts.idxmax()}), "
          f"imbalance ratio {ratio:.1f}"
          + ("  -> consider sampler: sqrt / class_weight / rare_threshold in the fold config" if ratio > 3 else ""))


def _print_duplicates(report: dict, mode: str) -> None:
    if not report["n_groups"]:
        print("duplicates: none found")
        return
    print(f"duplicates: {report['n_groups']} groups covering {report['n_images_in_groups']} images "
          f"(mode '{mode}': {'kept together in one fold' if mode == 'group' else mode}); "
          f"details in folds/duplicates.json")
    largest = max(len(g) for g in report["groups"])
    if largest > 20:  # near-duplicate links chain: a huge group means the distance joins distinct images
        print(f"  WARNING: the largest group holds {largest} images; dedup_distance may be too high for this "
              f"data (lower it in input/competition.yaml, or look at the groups in folds/eda.html)")
    for conflict in report["label_conflicts"][:10]:
        print("  label conflict: " + ", ".join(f"{m['image']} [{m['label']}]" for m in conflict))
    if report["test_near_train"]:
        print(f"  {len(report['test_near_train'])} test image(s) nearly duplicate a train image, e.g.:")
        for m in report["test_near_train"][:5]:
            print(f"    {m['test_image']} ~ {m['train_image']} [{m['train_label']}]")


def run_folds(project: Project, comp: Competition | None = None, progress: bool = True) -> pd.DataFrame:
    comp = comp or load_competition(project.input)
    table = scan_table(project, comp, progress)
    train = table[table["split"] == "train"].reset_index(drop=True)
    keep = train["ok"].to_numpy(bool)
    left_out = {"unreadable": int((~keep).sum())}
    threshold = comp.settings.get("ood_threshold")
    if threshold is not None:
        far = train["ood"].to_numpy(float) > threshold
        left_out["out_of_domain"] = int((far & keep).sum())
        keep &= ~far
    groups = None
    mode = comp.settings["dedup"]
    if mode == "keep_one":
        one = keep_one_per_group(train, duplicate_groups(train, comp.settings["dedup_distance"]))
        left_out["duplicates"] = int((keep & ~one).sum())
        keep &= one
    kept = train[keep].reset_index(drop=True)
    if mode == "group":  # regrouped here: scan.csv's groups may come from another dedup_distance
        groups = duplicate_groups(kept, comp.settings["dedup_distance"])
    print("left out of training: " + ", ".join(f"{v} {k}" for k, v in left_out.items()))
    folds, _ = ensure_folds(kept[["image", "label"]], project.folds_csv, comp.settings["n_splits"],
                            comp.settings["fold_seed"], groups)
    _warn_unseen_classes(folds)
    return folds


def classes_unseen_in_training(folds: pd.DataFrame) -> dict[str, int]:
    """Classes whose every image sits in one fold: that fold's model is scored on a class it never saw."""
    counts = pd.crosstab(folds["label"], folds["fold"])
    whole = counts.eq(counts.sum(axis=1), axis=0) & (counts.sum(axis=1) > 1).to_numpy()[:, None]
    return {str(c): int(counts.columns[whole.loc[c].to_numpy()][0]) for c in counts.index[whole.any(axis=1)]}


def _warn_unseen_classes(folds: pd.DataFrame) -> None:
    unseen = classes_unseen_in_training(folds)
    if unseen:
        listed = ", ".join(f"{c} (fold {k})" for c, k in list(unseen.items())[:10])
        print(f"WARNING: {len(unseen)} class(es) have every image in one fold (usually one duplicate group holds them all) "
              f": {listed}{' ...' if len(unseen) > 10 else ''}. That fold's model never trains on "
              f"them and its CV counts them as misses. If these are not true duplicates, lower dedup_distance "
              f"in input/competition.yaml (or set dedup: keep_one / off)")


def scan_table(project: Project, comp: Competition, progress: bool = True) -> pd.DataFrame:
    """folds/scan.csv when it covers exactly this competition's files, else a fresh scan."""
    if project.scan_csv.exists():
        table = pd.read_csv(project.scan_csv, keep_default_na=False, na_values={"ood": [""], "label": []})
        expected = list(comp.train["image"]) + list(comp.test["image"])
        if table["image"].tolist() == expected:
            table["ok"] = table["ok"].astype(str).str.lower().isin(["true", "1"])
            return table
    return run_scan(project, comp, progress=progress)
