"""What the blend writes: the candidate it can best defend on the test, and the expected score of that file.

A fitted blend follows its OOF rows; under a shift the test may reward another choice. The blend stage
scores a small fixed set of candidates -- the fitted blend, the plain mean of the members, and each
member alone -- with label-free estimates of their test macro-F1 (`estimators`), and writes the fitted
blend unless another candidate is estimated above it by more than `MARGIN` and by more than twice the
spread of the difference (a paired bootstrap over the test images), by the estimators' mean, with none
putting it below. Every
candidate's estimates are kept (blend.json's `selection`), and the written file's expected score is the
chosen estimator's number plus the fold average's gain (`estimators.fold_average_gain`): the number of
the file, not of one fold model; its ± joins the test images' draw and the estimators' spread on that
candidate. When the scan warns of a shift, the agreement line's per-image correctness
is made coherent across the fold pipelines (`estimators.coherent`: where they predict different classes,
at most one is right); the estimators that choose read each fold pipeline alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from foldblend.artifacts import Member
from foldblend.ensemble import estimators as S
from foldblend.ensemble.fitted import BlendOptions, FittedBlend
from foldblend.ensemble.importance import importance_weights
from foldblend.ensemble.pipeline import BlendResult, apply_blend, fold_test_views, member_oof_views, member_views
from foldblend.metrics import classification_scores

EXPECTED_BY = ("aol", "atc")  # the expected score: the agreement line, ATC without one (bench/shift_blend.py)
VOTERS = ("atc", "doc", "nuclear", "cot")  # the estimators that choose (`aol` moves every candidate along one
#                                           line, so it ranks them as their CV does: it gives a level, not a choice)
RANK_BY = "atc"          # the order in which members alone are tried
MARGIN = 0.01            # a candidate must beat the current choice's estimate by this much, at least
N_DRAWS = 100            # paired bootstrap draws over the test images
CV_GAP_NOTE = 0.03       # an expected score this far below the nested CV is said
FAR_AUC = 0.9            # members' outputs that separate test from OOF this well: no estimate is trusted


@dataclass
class Candidate:
    name: str
    model: FittedBlend
    oof_probs: np.ndarray          # (N, C) honest OOF predictions (nested for the fitted blend)
    fold_test_probs: np.ndarray    # (F, M, C) the test by the pipeline that predicted each fold
    test_probs: np.ndarray         # (M, C) what would be written
    holdout_probs: np.ndarray      # (H, C)


def _unfitted_candidates(members: list[Member], opts: BlendOptions) -> list[Candidate]:
    """The plain mean of the members and each member alone: nothing fitted, views and folds averaged."""
    names = [m.name for m in members]
    plain = BlendOptions(method="mean", metric=opts.metric, tta="mean", fold_combine=opts.fold_combine)
    fold = np.asarray(members[0].fold)
    oof = [member_oof_views(m).mean(axis=0, keepdims=True) for m in members]
    test = [member_views(m.test_logits, m.views, plain) for m in members]
    holdout = [member_views(m.holdout_logits, m.views, plain) for m in members]
    per_fold, _ = fold_test_views(members, fold, plain)
    weightings = [("mean", np.full(len(names), 1.0 / len(names)))]
    weightings += [(name, np.eye(len(names))[j]) for j, name in enumerate(names)]
    out = []
    for name, weights in weightings:
        model = replace(FittedBlend.unfitted(names, plain), weights=weights)
        out.append(Candidate(name, model, apply_blend(model, oof),
                             np.stack([apply_blend(model, per_fold(i)) for i in range(len(np.unique(fold)))]),
                             apply_blend(model, test), apply_blend(model, holdout)))
    return out


def _member_views(members: list[Member], fold: np.ndarray, opts: BlendOptions):
    """(OOF views, fold, per-fold test views) of the members as the blend reads them: the classifier's input."""
    per_fold, _ = fold_test_views(members, fold, replace(opts, tta="weighted"))
    return [member_oof_views(m) for m in members], fold, per_fold


def candidates(result: BlendResult, members: list[Member]) -> list[Candidate]:
    """The fitted blend first, then (with several members) the plain mean and each member alone."""
    blend = Candidate("blend", result.model, result.oof_probs, result.fold_test_probs, result.test_probs,
                      result.holdout_probs)
    return [blend] + (_unfitted_candidates(members, result.model.options) if len(members) > 1 else [])


def member_line(cands: list[Candidate], fold: np.ndarray) -> dict | None:
    """The agreement line (`estimators.agreement_line`) of the members alone; None with fewer than two."""
    return S.agreement_line([(c.oof_probs, c.fold_test_probs) for c in cands if c.name not in ("blend", "mean")],
                            fold)


def score_candidates(cands: list[Candidate], y: np.ndarray, fold: np.ndarray, seed: int = 0,
                     line: dict | None = None, coherent_for: tuple = ()) -> dict:
    """{name: {"cv", "estimates": {estimator: {"macro_f1", "std"}}, "gain", "draws": {estimator: (D,)}}};
    `aol` only with the members' agreement `line`; the estimators in `coherent_for` count the fold pipelines
    right on an image together at most once (`estimators.coherent`)."""
    names = [e for e in S.ESTIMATORS if e != "aol" or line is not None]
    c = cands[0].oof_probs.shape[1]
    m = cands[0].fold_test_probs.shape[1]
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, m, m) for _ in range(N_DRAWS)]
    out = {}
    for cand in cands:
        parts = S.FoldParts(y, cand.oof_probs, fold, cand.fold_test_probs, names, seed=seed, line=line,
                            coherent_for=coherent_for)
        est = {}
        for name in names:
            values = np.array([parts.estimate(name, rows) for rows in draws])
            est[name] = {"macro_f1": parts.estimate(name), "std": float(values.std()), "draws": values}
        out[cand.name] = {"cv": classification_scores(y, cand.oof_probs, c)["macro_f1"], "estimates": est,
                          "gain": S.fold_average_gain(cand.fold_test_probs, cand.test_probs)}
    return out


def _beats(challenger: dict, current: dict, margin: float) -> dict | None:
    """{estimator: advantage} when `challenger` is estimated above `current` beyond the noise, else None:
    the mean of the estimators' advantages above `margin` and above twice its spread (paired draws), and
    no estimator putting it below."""
    voters = {est: e for est, e in challenger["estimates"].items() if est in VOTERS}
    gains = {est: e["macro_f1"] - current["estimates"][est]["macro_f1"] for est, e in voters.items()}
    draws = np.mean([e["draws"] - current["estimates"][est]["draws"] for est, e in voters.items()], axis=0)
    mean = float(np.mean(list(gains.values())))
    ok = mean > max(margin, 2 * float(np.std(draws))) and min(gains.values()) > 0
    return gains if ok else None


def choose(scores: dict, margin: float = MARGIN) -> tuple[str, str]:
    """(the candidate to write, why). From the fitted blend, the choice moves to the plain mean, then to a
    member alone (best estimated first), only when the challenger is estimated above the current choice
    beyond the noise by the estimators together (`_beats`): each estimator is wrong somewhere (ATC's
    threshold is noisy on a few hundred test images; DoC, the nuclear norm and COT read confidences,
    which a linear SVM's margins distort), so their mean decides, and none may put the challenger below."""
    members = sorted((n for n in scores if n not in ("blend", "mean")),
                     key=lambda n: -scores[n]["estimates"][RANK_BY]["macro_f1"])
    current, reason = "blend", ""
    for name in (["mean"] if "mean" in scores else []) + members:
        gains = _beats(scores[name], scores[current], margin)
        if gains:
            reason = (f"estimated above {_label(current)} on the test ("
                      + ", ".join(f"{est} {diff:+.4f}" for est, diff in gains.items())
                      + f"; their mean beyond max({margin}, twice its spread), none below)")
            current = name
    return current, reason


def raise_sampling(expected: dict, sampling: float) -> dict:
    """`expected` with its test-draw part at least `sampling` and its ± ("std") the root of the sum of the
    squares of that part and the estimators' spread."""
    expected["sampling"] = max(expected["sampling"], float(sampling))
    expected["std"] = float(np.hypot(expected["sampling"], expected["spread"]))
    return expected


def _label(name: str) -> str:
    return {"blend": "the fitted blend", "mean": "the plain mean of the members"}.get(name, f"{name} alone")


def select(result: BlendResult, members: list[Member], enabled: bool = True, seed: int = 0) -> dict | None:
    """Score the candidates, write the chosen one into `result` (probabilities, pipeline, CV), and return
    blend.json's `selection`; None without per-fold test predictions (no test set, --method rank, ...)."""
    if result.fold_test_probs is None or result.model is None:
        return None
    y, fold = np.asarray(result.labels), np.asarray(members[0].fold)
    cands = candidates(result, members)
    line = member_line(cands, fold)
    # under a shift the fold pipelines' disagreement on the test is evidence that no OOF calibration carries:
    # the agreement line's number counts them right together at most once where they disagree (without one,
    # each fold's calibration on its OOF rows holds, and that would only pull the number down; the voters read
    # each pipeline alone: with it they chose worse once in bench/shift_blend.py's twelve runs)
    scores = score_candidates(cands, y, fold, seed, line, ("aol",) if result.shift_warning else ())
    auc = result.importance.get("auc")
    if auc is None:  # the importance classifier did not run (no shift warning): its AUC is still the guard
        auc = importance_weights(*_member_views(members, fold, result.model.options))["auc"]
    far = auc is not None and auc >= FAR_AUC
    chosen, reason = choose(scores) if enabled and not far else ("blend", "")
    pick = next(c for c in cands if c.name == chosen)
    by = next(e for e in EXPECTED_BY if e in scores[chosen]["estimates"])
    est = scores[chosen]["estimates"][by]
    # the ±: the test images' draw (bootstrap) and how far the estimators disagree on this candidate (their
    # spread): on bench/shift_blend.py the draw alone held the error within twice itself in 7 and 8 of 12 runs
    # (larger and smaller tests), with the spread in 8 and 11
    spread = float(np.std([e["macro_f1"] for e in scores[chosen]["estimates"].values()]))
    expected = raise_sampling({"macro_f1": float(np.clip(est["macro_f1"] + scores[chosen]["gain"], 0, 1)),
                               "sampling": 0.0, "spread": spread, "one_fold_model": est["macro_f1"],
                               "gain": scores[chosen]["gain"], "estimator": by}, est["std"])
    notes = []
    if chosen != "blend":
        c = len(result.classes)
        result.model, result.oof_probs, result.test_probs = pick.model, pick.oof_probs, pick.test_probs
        result.holdout_probs, result.fold_test_probs = pick.holdout_probs, pick.fold_test_probs.astype(np.float32)
        result.cv_in_sample = result.cv_nested = classification_scores(y, pick.oof_probs, c)
        result.weights = {n: float(w) for n, w in zip(pick.model.members, pick.model.weights)}
        result.biases, result.method = None, pick.model.options.method
        result.fitted = {"identity_weights": {n: None for n in pick.model.members},
                         "temperatures": {n: 1.0 for n in pick.model.members}, "calibration": 1.0}
        notes.append(f"wrote {_label(chosen)} instead of the fitted blend: {reason}; the weights fitted on OOF rows "
                     f"may not carry to the test")
    if far:
        notes.append(f"the members' outputs tell the test from the OOF rows at ROC AUC {auc:.2f}: the test is unlike "
                     f"anything the estimates were calibrated on, so none is trusted to choose (the fitted blend is "
                     f"written); " + ("the expected score reads the members' agreement on the test, not their "
                                      "confidence" if by == "aol" else "the expected score may be far off"))
    cv = result.cv_nested["macro_f1"]
    if not far and cv - expected["macro_f1"] > CV_GAP_NOTE:
        notes.append(f"the expected test macro-F1 {expected['macro_f1']:.4f} is {cv - expected['macro_f1']:.4f} below "
                     f"the nested CV {cv:.4f}: the test looks unlike the OOF rows; trust the expected number")
    return {"estimator": by, "chosen": chosen, "reason": reason, "expected": expected, "notes": notes,
            "domain_auc": auc, "estimates_trusted": not far, "agreement_line": line,
            "candidates": {name: {"cv": s["cv"], "gain": s["gain"],
                                  "estimates": {e: {"macro_f1": v["macro_f1"], "std": v["std"]}
                                                for e, v in s["estimates"].items()}}
                           for name, s in scores.items()},
            "candidate_test_probs": {c.name: c.test_probs for c in cands},
            "candidate_fold_test_probs": {c.name: c.fold_test_probs for c in cands}}


def describe_expected(selection: dict | None) -> str:
    """'expected test macro-F1 0.71 ± 0.02 (the fitted blend; atc + fold average 0.03)'."""
    if not selection:
        return ""
    e = selection["expected"]
    return (f"expected test macro-F1 {e['macro_f1']:.4f} ± {e['std']:.4f} ({_label(selection['chosen'])}; "
            f"{e['estimator']} of one fold model {e['one_fold_model']:.4f} + the fold average's gain {e['gain']:.4f})")


def describe_candidates(selection: dict | None) -> list[str]:
    """One line per candidate: its CV and every estimate."""
    if not selection:
        return []
    lines = []
    for name, s in selection["candidates"].items():
        mark = "*" if name == selection["chosen"] else " "
        ests = " · ".join(f"{e} {v['macro_f1']:.4f}" for e, v in s["estimates"].items())
        lines.append(f" {mark} {name:<20} CV {s['cv']:.4f} · {ests} · fold average +{s['gain']:.4f}")
    return lines


def saved_lines(blend_json: dict | None) -> list[str]:
    """What blend.json's `selection` says, for the summary and the report: the expected score of the written
    file and the notes (a candidate written instead of the fitted blend, an expected score far below the CV)."""
    selection = (blend_json or {}).get("selection")
    if not selection:
        return []
    return [describe_expected(selection)] + [f"note: {n}" for n in selection.get("notes") or []]
