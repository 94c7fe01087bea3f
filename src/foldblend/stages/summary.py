"""The closing table of a run: each experiment's CV (per fold and overall), each blend's CV, the submission."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from foldblend.artifacts import read_json
from foldblend.data.find import Competition, load_competition
from foldblend.data.split import settings_path
from foldblend.durations import format_duration
from foldblend.ensemble.confidence import describe_estimates, member_note
from foldblend.ensemble.selection import saved_lines
from foldblend.ensemble.store import split_members
from foldblend.members.signatures import fold_seconds
from foldblend.paths import Project
from foldblend.running.member_plan import rising
from foldblend.scanning.shift_files import read_shift
from foldblend.submission.log import read_log


def experiment_rows(project: Project) -> pd.DataFrame:
    _, stale = split_members(project.oof, project.folds_csv) if project.oof.exists() else ([], [])
    rows = []
    for scores_path in sorted(project.oof.glob("*/scores.json")):
        if scores_path.parent.name.startswith("_") or not (scores_path.parent / "oof.npz").exists():
            continue
        s = json.loads(scores_path.read_text())
        name = scores_path.parent.name
        row = {"experiment": name + (" (stale: other split)" if name in stale else ""), "model": s.get("model", "")}
        for k, v in sorted(s.get("per_fold", {}).items(), key=lambda kv: int(kv[0])):
            row[f"fold {k}"] = round(v["macro_f1"], 4)
        row["CV macro-F1"] = round(s["overall"]["macro_f1"], 4)
        row["CV acc"] = round(s["overall"]["accuracy"], 4)
        for view, v in s.get("per_view", {}).items():
            row[f"view {view}"] = round(v["macro_f1"], 4)
        rows.append(row)
    return pd.DataFrame(rows)


def blend_row(project: Project) -> dict | None:
    path = project.oof / "_blend" / "blend.json"
    if not path.exists():
        return None
    b = json.loads(path.read_text())
    held = b.get("holdout") or {}
    return {"method": b.get("method"), "in-sample": b.get("cv_in_sample", {}).get("macro_f1"),
            "nested CV": b.get("cv_nested", {}).get("macro_f1"),
            "weights": ", ".join(f"{k} {v:.2f}" for k, v in b.get("weights", {}).items()),
            "holdout": (held.get("blend") or {}).get("macro_f1"), "holdout_n": held.get("n_images"),
            "estimates": describe_estimates(b.get("test_matched"), b.get("confidence")),
            "member_note": "\n".join(saved_lines(b)) if b.get("selection") else
            member_note(b.get("confidence"), b.get("member_confidence")),
            "has_confidence": bool(b.get("confidence")),
            "member_holdout": {k: v["macro_f1"] for k, v in (held.get("members") or {}).items()}}


def shift_lines(project: Project, blend: dict | None = None) -> list[str]:
    """The scan's verdict on CV when it found CV optimistic, and which folds were used (else nothing);
    `blend`: the summary's `blend_row`, if there is a blend."""
    shift = read_shift(project)
    if not shift or not shift.get("optimistic"):
        return []
    folds = (read_json(settings_path(project.folds_csv)) or {}).get("grouping") or {}
    lines = [f"WARNING: CV is optimistic (scan): OOF images have closer relatives in training than test images in "
             f"{shift['closer_share']:.0%} of pairs (nearest-image similarity: OOF median "
             f"{shift['oof_similarity']['median']:.3f}, test median {shift['test_similarity']['median']:.3f})"]
    if folds.get("semantic_threshold") is not None:
        lines.append(f"  the folds group images by appearance at similarity {folds['semantic_threshold']:.4f} "
                     f"(dedup: {folds.get('dedup')}) so OOF images are as far from training as test images")
    elif folds.get("user_groups"):
        lines.append("  the folds use your groups (groups.csv / group column)")
    else:
        lines.append("  the folds do not correct for it: trust the blend's test estimates over its CV, or set dedup: "
                     "auto in input/competition.yaml and rerun folds, train, blend")
    if (blend or {}).get("has_confidence"):
        lines.append("  the blend's confidence estimate reads the test off the fold models themselves, so it also sees "
                     "what the embedding cannot (a concept new to the models in a familiar style)")
    return lines


def read_competition(project: Project) -> Competition | None:
    """The competition in input/, or None when it cannot be read."""
    try:
        return load_competition(project.input)
    except (OSError, ValueError):
        return None


def competition_line(comp: Competition | None) -> str | None:
    """Which layout was found, and whether there is a test set (None when input/ cannot be read)."""
    if comp is None:
        return None
    line = f"input: {comp.layout}"
    if not comp.has_test:
        line += ("\n(no test set: `foldblend evaluate --data FOLDER|CSV --exp blend` scores labelled images, "
                 "`foldblend predict` labels new ones, `foldblend export` ships the models)")
    return line


def latest_submission(project: Project) -> pd.Series | None:
    log = project.submissions / "log.csv"
    if not log.exists():
        return None

    df = read_log(project.submissions)
    return df.iloc[-1] if len(df) else None


def true_test_score(comp: Competition | None, submission: Path) -> float | None:
    """The true test macro-F1 of a label submission, from the labels competition.yaml's `test_labels` names
    (a finished competition, or the demo); None without them or for a submission of probabilities."""
    from sklearn.metrics import f1_score

    if comp is None or comp.test_labels_path is None or not submission.exists():
        return None
    truth = pd.read_csv(comp.test_labels_path, dtype=str, keep_default_na=False)
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False)
    if truth.shape[1] < 2 or sub.shape[1] != 2:
        return None
    truth, sub = truth.iloc[:, :2].set_axis(["id", "label"], axis=1), sub.set_axis(["id", "label"], axis=1)
    merged = truth.merge(sub, on="id", suffixes=("_true", "_pred"))
    return float(f1_score(merged["label_true"], merged["label_pred"], average="macro"))


def print_summary(project: Project) -> None:
    exps = experiment_rows(project)
    print("\n=== foldblend summary ===")
    comp = read_competition(project)
    line = competition_line(comp)
    if line:
        print(line)
    blend = blend_row(project)
    if blend and blend["member_holdout"] and len(exps):  # scored by the last blend, once, after fitting
        names = exps["experiment"].str.replace(" (stale: other split)", "", regex=False)
        exps["holdout macro-F1"] = [round(blend["member_holdout"][n], 4) if n in blend["member_holdout"] else None
                                    for n in names]
    if len(exps):
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            print(exps.to_string(index=False))
    else:
        print("no finished experiments in oof/")
    if blend:
        held = (f", holdout {blend['holdout']:.4f} ({blend['holdout_n']} held-out images, never trained or fitted on)"
                if blend["holdout"] is not None else "")
        matched = f" · {blend['estimates']}" if blend["estimates"] else ""
        print(f"blend ({blend['method']}): nested CV macro-F1 {blend['nested CV']:.4f}{matched}{held} "
              f"(in-sample {blend['in-sample']:.4f}); weights: {blend['weights']}")
        if blend["member_note"]:
            print(blend["member_note"])
        if len(exps):
            best = exps.loc[exps["CV macro-F1"].idxmax()]
            if best["CV macro-F1"] > blend["nested CV"]:
                print(f"note: {best['experiment']} alone (CV {best['CV macro-F1']:.4f}) beats the blend's nested CV; "
                      f"try another `foldblend blend --method`, or `foldblend submit --exp {best['experiment']}`")
    for line in shift_lines(project, blend) + tta_lines(project) + budget_lines(project):
        print(line)
    sub = latest_submission(project)
    if sub is not None:
        print(f"submission: {project.submissions.name}/{sub['file']}  (CV {sub.get('cv')})")
        test_f1 = true_test_score(comp, project.submissions / str(sub["file"]))
        if test_f1 is not None:
            print(f"demo only - true test macro-F1 of that file (held-back labels): {test_f1:.4f}")


def tta_lines(project: Project) -> list[str]:
    """What the last blend did with each member's TTA views: with `--tta weighted` the identity view's
    weight against the others was fitted on OOF (nested), so a view that hurts is dropped (weight 0)."""
    path = project.oof / "_blend" / "blend.json"
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    parts = []
    for name, w in ((b.get("fitted") or {}).get("identity_weights") or {}).items():
        scores = project.oof / name / "scores.json"
        views = [v for v in json.loads(scores.read_text()).get("per_view", {})] if scores.exists() else []
        others = "+".join(v for v in views if v != "identity")
        if not others:
            continue
        if w is None:
            parts.append(f"{name}: {others} averaged with identity")
        elif w >= 0.995:
            parts.append(f"{name}: {others} dropped (it hurt OOF log-loss)")
        elif w <= 0.005:
            parts.append(f"{name}: only {others} kept (identity hurt OOF log-loss)")
        else:
            parts.append(f"{name}: {others} kept at weight {1 - w:.2f} (identity {w:.2f})")
    if not parts:
        return []
    how = ("weighted on OOF by `--tta weighted`" if (b.get("options") or {}).get("tta") == "weighted"
           else "averaged; `foldblend blend --tta weighted` weighs them by OOF evidence")
    return [f"TTA views ({how}): " + "; ".join(parts)]


def budget_lines(project: Project) -> list[str]:
    """What `foldblend init` planned (preset, time limit, estimate) beside what was spent: its probe and
    every fold's wall seconds (models/<exp>/fold_<k>/time.json)."""
    record = read_json(project.init_record)
    if not record:
        return []
    n_folds = record.get("data", {}).get("n_folds", 0)
    rows, spent = [], float(record.get("probe_s") or 0.0)
    for name, m in record.get("members", {}).items():
        times = [fold_seconds(d) for d in sorted(project.models.glob(f"{name}/fold_*"))]
        seconds = sum(t.get("seconds", 0.0) for t in times)
        spent += seconds
        planned = f"planned {format_duration(m['estimate_s'])}, " if m.get("estimate_s") is not None else ""
        rows.append(f"  {name}: {planned}spent {format_duration(seconds)} "
                    f"({sum(1 for t in times if t)}/{n_folds} folds)")
    limit = record.get("time_limit_s")
    head = f"time ({record.get('command', 'foldblend init')}): "
    if limit:
        head += f"limit {format_duration(limit)}, "
    if record.get("planned_s") is not None:
        head += f"planned {format_duration(record['planned_s'])} of training, "
    head += (f"spent {format_duration(spent)} (probe {format_duration(record.get('probe_s') or 0)} + each fold's "
             f"wall time; scan, blend and report not counted)")
    if limit and spent > limit:
        head += f": OVER the limit by {format_duration(spent - limit)}"
    dropped = [d["name"] for d in record.get("dropped", [])]
    lines = [head] + rows + ([f"  left out by init (their trials did not fit): {', '.join(dropped)}"]
                             if dropped else [])
    return lines + train_budget_lines(record.get("train"))


def train_budget_lines(kept: dict | None) -> list[str]:
    """What `foldblend train` did to hold the limit (running.budget's record): each member's trial score,
    epochs and what became of it, then every decision in order."""
    if not kept:
        return []
    over = kept["spent_s"] - kept["limit_s"]
    lines = [f"training held to {format_duration(kept['limit_s'])}: spent {format_duration(kept['spent_s'])}"
             + (f", OVER by {format_duration(over)}" if over > 0 else "")]
    for name, m in kept.get("members", {}).items():
        trial = f"trial macro-F1 {m['trial_score']:.3f}" if m.get("trial_score") is not None else "no trial"
        if rising(m.get("value"), m.get("trial_score")):
            trial += f", projected {m['value']:.3f} at {m['config_epochs']} epochs"
        epochs = (f", {m['epochs']} of {m['config_epochs']} epochs per fold" if m.get("config_epochs") else "")
        lines.append(f"  {name}: {m['status']} ({trial}{epochs}; spent {format_duration(m['spent_s'])})")
    return lines + [f"  {line}" for line in kept.get("decisions", [])]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass  # no options


def run(args: argparse.Namespace, project: Project) -> None:
    print_summary(project)
