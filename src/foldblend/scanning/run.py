"""The scan as a whole: every image read once (`inventory`), duplicate groups, out-of-domain scores, the
train/test shift check (`shift_check`), folds/scan.csv and folds/eda.html.

Called by the scan stage, and by the folds stage when input/ changed since the last scan (`scan_table`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from foldblend.artifacts import write_csv, write_json
from foldblend.data.classes import class_table
from foldblend.data.dedup import duplicate_groups, duplicate_report
from foldblend.data.find import Competition, load_competition
from foldblend.data.freshness import changed_since_scan
from foldblend.data.ood import STAT_COLUMNS, ood_flags, ood_report, scores_from_stats
from foldblend.paths import Project
from foldblend.safety import say_swept, sweep_temporaries
from foldblend.scanning.eda import write_eda
from foldblend.scanning.inventory import scan_images, scan_summary
from foldblend.scanning.shift_check import run_shift_check


def run_scan(project: Project, comp: Competition | None = None, workers: int | None = None,
             progress: bool = True) -> pd.DataFrame:
    comp = comp or load_competition(project.input)
    say_swept(sweep_temporaries(project.folds_dir), project)
    print(comp.describe())
    print(f"class index (class_order: {comp.class_order}):\n{class_table(comp.classes)}")
    paths = [comp.root / p for p in comp.train["image"]] + [comp.root / p for p in comp.test["image"]]
    table = scan_images(paths, comp.root, cache_csv=project.folds_dir / "scan_cache.csv", workers=workers,
                        progress=progress)
    n_train = len(comp.train)
    table["split"] = ["train"] * n_train + ["test"] * len(comp.test)
    table["label"] = list(comp.train["label"]) + [None] * len(comp.test)
    table["group"] = duplicate_groups(table, comp.settings.dedup_distance)
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
    _print_duplicates(report, comp.settings.dedup)
    flagged, threshold, how = ood_flags(scores, comp.settings.ood_threshold)
    if ok_train.sum() >= 3:
        suspects = ood_report(table, scores, top=10, stats=stats)
        print("most out-of-domain train images (score):")
        for row in suspects.itertuples():
            print(f"  {row.score:.3f}  {row.image}  ({row.stands_out})")
        drop = comp.settings.ood == "drop"
        print(f"out-of-domain threshold {threshold:.3f} ({how}): {int(flagged.sum())} train image(s) above it, "
              + ("left out by `foldblend folds` (ood: drop)" if drop else
                 f"kept (ood: report; set ood: drop in {comp.root.name}/competition.yaml to leave them out)"))
    shift, shift_arrays = run_shift_check(project, comp, table, progress=progress)
    eda = write_eda(table, table["group"].to_numpy(), scores, table["label"], project.folds_dir / "eda.html",
                    comp.root, ood_flagged={"mask": flagged, "threshold": threshold, "how": how,
                                            "mode": comp.settings.ood},
                    shift={"result": shift, "arrays": shift_arrays, "mode": comp.settings.dedup,
                           "train_images": table.loc[is_train, "image"].tolist()} if shift else None)
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
          f"(mode '{mode}': {'kept together in one fold' if mode in ('group', 'auto', 'semantic') else mode}); "
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


def scan_table(project: Project, comp: Competition, progress: bool = True) -> pd.DataFrame:
    """folds/scan.csv when it covers exactly this competition's files as they are now, else a fresh scan."""
    expected = list(comp.train["image"]) + list(comp.test["image"])
    if project.scan_csv.exists():
        changed = changed_since_scan(project.scan_csv, comp.root, expected)
        if not changed:
            table = pd.read_csv(project.scan_csv, keep_default_na=False, na_values={"ood": [""], "label": []},
                                dtype={"image": str})
            if table["image"].tolist() == expected:
                table["ok"] = table["ok"].astype(str).str.lower().isin(["true", "1"])
                return table
        else:
            print(f"{len(changed)} input file(s) changed since the scan (e.g. {changed[0]}): scanning again")
    return run_scan(project, comp, progress=progress)
