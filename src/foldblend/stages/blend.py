"""`foldblend blend`: every finished member in oof/ (or `--members`) blended on OOF, scored by nested CV,
written to oof/_blend/ (blend.json: what was fitted and how well; blend.npz: OOF, test and held-out
probabilities with their ids). The arrays-in, arrays-out pipeline is `ensemble.pipeline`.
"""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import numpy as np

from foldblend.artifacts import load_member, member_digest, read_json, write_json, write_npz
from foldblend.ensemble import confidence as C
from foldblend.ensemble import matched as M
from foldblend.ensemble import selection as S
from foldblend.ensemble.fitted import BlendOptions
from foldblend.ensemble.importance import describe as describe_importance
from foldblend.ensemble.pipeline import BlendResult, blend, format_table
from foldblend.ensemble.store import discover_members, split_members
from foldblend.metrics import METRICS
from foldblend.safety import check_plain_name, remove, say_swept, sweep_temporaries


def save_blend(result: BlendResult, out_dir: Path, member_digests: dict[str, str] | None = None) -> None:
    """blend.npz (arrays with their ids) and blend.json (what was done, and how well), both atomic."""
    out_dir = Path(out_dir)
    remove(out_dir / "blend.json", inside=out_dir)  # written last: a kill between the two leaves no blend
    holdout_probs = result.holdout_probs if result.holdout_probs is not None else np.zeros((0, len(result.classes)))
    write_npz(out_dir / "blend.npz", ids=np.asarray(result.ids).astype(str), labels=result.labels,
              test_ids=np.asarray(result.test_ids).astype(str), oof_probs=result.oof_probs,
              test_probs=result.test_probs, classes=np.asarray(result.classes),
              holdout_ids=np.asarray(result.holdout_ids).astype(str),
              holdout_labels=np.asarray(result.holdout_labels, dtype=np.int64), holdout_probs=holdout_probs)
    write_json(out_dir / "blend.json", {
        "method": result.method, "options": result.options, "members": list(result.weights),
        "weights": result.weights, "biases": None if result.biases is None else result.biases.tolist(),
        "fitted": result.fitted, "cv_in_sample": result.cv_in_sample, "cv_nested": result.cv_nested,
        "member_scores": result.member_scores, "holdout": result.holdout_scores, "warnings": result.warnings,
        "test_matched": result.test_matched, "confidence": result.confidence,
        "member_confidence": result.member_confidence, "importance": result.importance,
        "shift_warning": result.shift_warning, "notes": result.notes,
        "selection": None if result.selection is None else {k: v for k, v in result.selection.items()
                                                            if not k.startswith("candidate_")},
        "classes": result.classes,
        "member_digests": member_digests or {},
        "pipeline": None if result.model is None else result.model.to_json()})


def run_blend(oof_root: Path, names: list[str] | None, out_dir: Path, folds_dir: Path | None = None,
              options: BlendOptions | None = None, **option_values) -> BlendResult:
    """Load the named members (default: every finished one under oof_root), blend, print, save.

    `options`, or `BlendOptions(**option_values)` (its fields as keywords).

    With a test set, the test score is also estimated from the fold pipelines' confidence (`confidence`),
    the blend's and, with several members, each member's; with `folds_dir` (folds.csv, similarity.npz),
    the nested CV is also given test-matched (`matched`), and the bootstraps resample folds.csv's groups."""
    oof_root = Path(oof_root)
    names = list(names) if names else discover_members(oof_root)
    if not names:
        raise ValueError(f"no ensemble members under {oof_root} (each needs oof.npz; run `foldblend train`)")
    members = [load_member(oof_root / name) for name in names]
    if options is not None and option_values:
        raise TypeError(f"run_blend: options given twice ({', '.join(option_values)} beside options=)")
    opts = options or BlendOptions(**option_values)
    shift_warning = bool(folds_dir is not None and (read_json(Path(folds_dir) / "shift.json") or {}).get("optimistic"))
    result = blend(members, opts, shift_warning)
    print(format_table(result, result.options["metric"] if result.options["metric"] in METRICS else "macro_f1"))
    for note in result.notes:
        print(f"note: {note}")
    if shift_warning or result.importance.get("applied"):
        print(describe_importance(result.importance, len(result.labels)))
    selection = S.select(result, members, enabled=opts.select == "auto")
    result.selection = selection
    for line in S.describe_candidates(selection):
        print(line)
    for note in (selection or {}).get("notes", []):
        print(f"note: {note}")
    if folds_dir is not None:
        inputs, why = M.load_similarity(Path(folds_dir) / "similarity.npz", Path(folds_dir) / "folds.csv", result.ids)
        if inputs is None:
            print(f"test-matched CV: not computed ({why})")
        else:
            result.test_matched = M.matched_score(result.labels, result.oof_probs, n_classes=len(result.classes),
                                                       **inputs)
    if result.fold_test_probs is not None:
        groups = M.read_groups(Path(folds_dir) / "folds.csv", result.ids) if folds_dir is not None else None
        fold = np.asarray(members[0].fold)
        result.confidence = C.confidence_score(result.labels, result.oof_probs, fold, result.fold_test_probs, groups,
                                               len(result.classes))
        if selection and result.confidence.get("std") is not None:  # its bootstrap also resamples OOF groups
            S.raise_sampling(selection["expected"], result.confidence["std"])
        if len(members) > 1 and selection:  # each member alone, as `submit --exp NAME` would submit it
            result.member_confidence = {m.name: selection["candidates"][m.name]["estimates"]["atc"] for m in members}
    else:
        print(f"confidence estimate: not computed ({result.no_confidence})")
    estimates = C.describe_estimates(result.test_matched, result.confidence)
    if estimates:
        print(f"nested CV {result.cv_nested['macro_f1']:.4f} · {estimates}")
    if selection:
        print(f"nested CV {result.cv_nested['macro_f1']:.4f} · {S.describe_expected(selection)}")
    save_blend(result, out_dir, {name: member_digest(oof_root / name) for name in names})
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(BlendOptions):  # one option per field: its default, help and choices
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            action = "store_true" if not f.default else argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, choices=f.metadata["choices"],
                                help=f.metadata["help"])
    parser.add_argument("--members", nargs="+", metavar="NAME", help="experiments to blend (default: all)")


def options_from_args(args: argparse.Namespace) -> BlendOptions:
    return BlendOptions(**{f.name: getattr(args, f.name) for f in fields(BlendOptions)})


def run(args: argparse.Namespace, project) -> BlendResult:
    out_dir = project.oof / "_blend"
    say_swept(sweep_temporaries(out_dir), project)
    members = args.members
    for name in members or []:
        check_plain_name(name, "--members name")
    if not members:
        members, stale = split_members(project.oof, project.folds_csv)
        for name in stale:
            print(f"left out oof/{name}: made on another split than {project.rel(project.folds_csv)} "
                  f"(retrain it with `foldblend train`, or delete oof/{name}/)")
        if not members:
            raise ValueError(f"no ensemble member matches {project.rel(project.folds_csv)}: run `foldblend train`")
    result = run_blend(project.oof, members, out_dir, folds_dir=project.folds_dir, options=options_from_args(args))
    print(f"wrote {project.rel(out_dir / 'blend.json')} and blend.npz")
    return result
