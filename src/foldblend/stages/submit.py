"""`foldblend submit`: the blend's (or one experiment's) test predictions written in the sample's format
(`submission.format`), logged in submissions/log.csv (`submission.log`), optionally uploaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from foldblend.artifacts import changed_members, load_member, read_json
from foldblend.data.find import load_competition
from foldblend.data.freshness import digest_of_test_files
from foldblend.metrics import classification_scores, softmax
from foldblend.safety import check_plain_name
from foldblend.submission.format import FORMATS, upload, write_submission
from foldblend.submission.log import LOG_NAME, SubmissionError, record_lb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="with --lb: the submission file whose leaderboard score to record")
    parser.add_argument("--lb", type=float, help="record this public-leaderboard score for FILE in log.csv")
    parser.add_argument("--exp", metavar="NAME", help="submit one experiment's test predictions instead of the blend")
    parser.add_argument("--name", help="file name stem (default blend_<method>, or the experiment's name)")
    parser.add_argument("--format", choices=FORMATS, help="override the format detected from the sample")
    parser.add_argument("--upload", metavar="COMPETITION", help="also submit with the kaggle CLI to this competition")
    parser.add_argument("--message", default="", help="submission message (default: file name and CV)")


def blend_prediction(oof_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], float | None, dict, str]:
    """Test ids, probabilities, classes, honest CV, log info and default name of the saved blend."""
    blend_dir = Path(oof_root) / "_blend"
    if not (blend_dir / "blend.json").exists():
        raise SubmissionError(f"{blend_dir}/blend.json not found: run `foldblend blend` first (or use --exp NAME)")
    meta = json.loads((blend_dir / "blend.json").read_text(encoding="utf-8"))
    changed = changed_members(oof_root, meta.get("member_digests") or {})
    if changed:
        raise SubmissionError(f"oof/{changed[0]}/ changed after the last blend (retrained or predicted again): "
                              f"run `foldblend blend` again before submitting")
    with np.load(blend_dir / "blend.npz", allow_pickle=False) as z:
        test_ids, probs = z["test_ids"].astype(str), z["test_probs"]
    metric = meta.get("options", {}).get("metric", "macro_f1")
    info = {"members": meta["members"], "weights": meta["weights"], "method": meta["method"],
            "metric": metric, "options": meta.get("options", {}), "biases": meta.get("biases")}
    selection = meta.get("selection") or {}
    chosen = selection.get("chosen", "blend")
    if selection.get("expected"):
        info["expected"] = selection["expected"]["macro_f1"]
    name = f"blend_{meta['method']}" if chosen == "blend" else f"blend_{chosen}"
    return test_ids, probs, meta["classes"], meta["cv_nested"].get(metric), info, name


def member_prediction(oof_root: Path, exp: str):
    """The same for one experiment: views and fold models combined by mean of probabilities."""
    member = load_member(Path(oof_root) / exp)
    probs = softmax(member.test_logits).mean(axis=(0, 1))
    cv = classification_scores(member.labels, softmax(member.oof_logits).mean(axis=0), member.n_classes)["macro_f1"]
    info = {"members": [exp], "weights": {exp: 1.0}, "method": "single", "metric": "macro_f1"}
    return member.test_ids, probs, member.classes, cv, info, exp


def check_test_files(oof_root: Path, members: list[str], competition) -> None:
    """Refuse predictions made from other test files than input/ holds now (replaced after training)."""
    for name in members:
        scores_path = Path(oof_root) / name / "scores.json"
        recorded = (json.loads(scores_path.read_text(encoding="utf-8")).get("inputs") or {}).get("test_files") \
            if scores_path.exists() else None
        if recorded is None:
            print(f"note: oof/{name}/ does not record which test files it predicted (made by an older foldblend); "
                  f"it is not checked against input/")
        elif recorded != digest_of_test_files(competition):
            raise SubmissionError(f"test images in {competition.root.name}/ changed after oof/{name}/ predicted them: "
                                  f"run `foldblend train` (it predicts again, without retraining) and "
                                  f"`foldblend blend`, then submit")


def submit_from_args(args: argparse.Namespace, project, competition) -> Path | None:
    """`foldblend submit`: write the blend's (or --exp's) test predictions in the sample's format.

    A train-only competition has no sample, so nothing to write: that is said, not an error (run.sh goes on)."""
    for value, what in ((args.name, "--name"), (args.exp, "--exp")):
        if value is not None:
            check_plain_name(value, what)
    if args.lb is not None:
        if not args.file:
            raise SubmissionError("--lb needs the submission FILE it belongs to")
        record_lb(project.submissions, args.file, args.lb)
        print(f"recorded lb={args.lb:g} for {Path(args.file).name} in {project.rel(project.submissions / LOG_NAME)}")
        return Path(args.file)
    if competition.sample is None:
        print(f"nothing to submit: {project.rel(competition.root)}/ has no sample submission (a train-only task). "
              f"Score labelled images with `foldblend evaluate --data FOLDER|CSV --exp blend` (the held-out split: "
              f"--data folds/holdout.csv), predict new ones with `foldblend predict --images FOLDER --exp blend`, "
              f"and ship the models with `foldblend export --exp blend OUT`")
        return None
    sample = competition.sample
    if sample.columns[0] != competition.id_column:
        raise SubmissionError(f"the sample's first column is {sample.columns[0]!r}, not the id column "
                              f"{competition.id_column!r}")
    source = member_prediction(project.oof, args.exp) if args.exp else blend_prediction(project.oof)
    test_ids, probs, classes, cv, info, default_name = source
    check_test_files(project.oof, list(info.get("members") or []), competition)
    if list(classes) != list(competition.classes):
        # same set in another order: class indices (and class_id submissions) would silently be wrong
        raise SubmissionError(f"the predictions' classes {classes} are not the competition's "
                              f"{list(competition.classes)} in that order; retrain (`foldblend train`) and blend again")
    # when the scan warns that CV is optimistic, the name carries the expected test score instead of the CV
    warned = not args.exp and bool((read_json(project.oof / "_blend" / "blend.json") or {}).get("shift_warning"))
    name_score = ("exp", info["expected"]) if warned and info.get("expected") is not None else None
    path = write_submission(sample, test_ids, probs, classes, project.submissions, args.name or default_name, cv,
                            info, fmt=args.format or competition.submission_format, name_score=name_score)
    print(f"submission: {project.rel(path)}")
    if args.upload:
        upload(args.upload, path, args.message or f"{path.stem} (cv {cv})")
    return path


def run(args: argparse.Namespace, project) -> Path | None:
    return submit_from_args(args, project, load_competition(project.input))
