"""Blend ensemble members' OOF/test predictions and score the blend honestly.

A blend is a small pipeline fitted on OOF rows: TTA-view weights, per-member temperatures, member
weights (or a stacker), a temperature after combining, per-class decision biases. Every fitted step
can overfit the OOF rows it was tuned on, so the pipeline is also refitted once per fold on the other
folds' rows and applied to the held-out fold (nested CV); that collected prediction is the number to
trust, and the one saved as the blend's `oof_probs`. The numeric methods live in `methods`.

The held-out test split (folds.csv fold -1) is never fitted on: the pipeline fitted on all OOF rows
predicts it like the test set, and each member and the blend are scored on it once, here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from foldblend.artifacts import Member
from foldblend.ensemble import methods as E
from foldblend.ensemble.fitted import WEIGHTED_METHODS, BlendOptions, FittedBlend
from foldblend.ensemble.importance import importance_weights
from foldblend.metrics import HIGHER_IS_BETTER, classification_scores, softmax

OVERFIT_WARNING_GAP = 0.01


@dataclass
class BlendResult:
    oof_probs: np.ndarray               # (N, C) nested-CV predictions (= in-sample when nothing is fitted)
    test_probs: np.ndarray              # (M, C) pipeline fitted on all OOF rows
    weights: dict[str, float]
    member_scores: dict[str, dict]
    cv_in_sample: dict
    cv_nested: dict
    warnings: list[str]
    biases: np.ndarray | None
    classes: list[str]
    ids: np.ndarray
    labels: np.ndarray
    test_ids: np.ndarray
    method: str
    options: dict = field(default_factory=dict)
    fitted: dict = field(default_factory=dict)
    holdout_ids: np.ndarray = field(default_factory=lambda: np.empty(0, str))
    holdout_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    holdout_probs: np.ndarray | None = None     # (H, C): the pipeline fitted on all OOF rows
    holdout_scores: dict = field(default_factory=dict)  # {"members": {name: scores}, "blend": scores}
    test_matched: dict | None = None            # CV reweighted to the test's neighbour similarity (`matched`)
    fold_test_probs: np.ndarray | None = None   # (F, M, C): the test by the pipeline that predicted each fold
    confidence: dict | None = None              # the test score predicted from confidences (`confidence`)
    no_confidence: str = ""                     # why fold_test_probs (and so `confidence`) is missing
    member_confidence: dict | None = None       # {member: its own confidence estimate} (several members)
    model: FittedBlend | None = None            # the pipeline fitted on all OOF rows (what predicted the test)
    importance: dict = field(default_factory=dict)  # the importance weights' ESS and AUC (`importance`), or why not
    selection: dict | None = None               # the candidates' estimates and the one written (`selection`)
    shift_warning: bool = False                 # the scan's check said CV is optimistic
    notes: list[str] = field(default_factory=list)  # what the fit decided not to use, and why


# ----------------------------------------------------------------------------- alignment

def _first_difference(a: np.ndarray, b: np.ndarray) -> str | None:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    bad = np.flatnonzero(np.asarray(a) != np.asarray(b))
    return None if len(bad) == 0 else f"first difference at row {bad[0]}: {a[bad[0]]!r} vs {b[bad[0]]!r}"


def check_alignment(members: list[Member]) -> None:
    """Raise ValueError unless every member predicts the same rows, labels, folds, classes and test ids.

    Averaging misaligned arrays fails silently (the shapes match), so this runs before anything else.
    """
    if not members:
        raise ValueError("no ensemble members to blend")
    ref = members[0]
    for other in members[1:]:
        pair = f"members {ref.name!r} and {other.name!r}"
        if list(ref.classes) != list(other.classes):
            raise ValueError(f"{pair} have different classes: {list(ref.classes)} vs {list(other.classes)}")
        for what in ("ids", "labels", "fold", "test_ids", "holdout_ids", "holdout_labels"):
            diff = _first_difference(getattr(ref, what), getattr(other, what))
            if diff:
                raise ValueError(f"{pair} differ in {what}: {diff}")


# ----------------------------------------------------------------------------- the fitted pipeline

def _rows(views: list[np.ndarray], rows) -> list[np.ndarray]:
    return [v[:, rows] for v in views]


def _combine(probs: np.ndarray, model: FittedBlend) -> np.ndarray:
    opts = model.options
    if opts.method == "stack":
        return E.stack_predict(model.stacker, probs)
    if opts.method == "logit_mean":
        return E.logit_mean(probs)
    if opts.method == "rank":
        return E.rank_average(probs)
    if opts.method == "power":
        return E.power_mean(probs, opts.power)
    if opts.method in WEIGHTED_METHODS:
        return E.mean_probs(probs, model.weights)
    raise ValueError(f"unknown blend method {opts.method!r} (methods: {', '.join(E.COMBINE_METHODS)})")


def member_oof_views(member: Member) -> np.ndarray:
    """(V, N, C) one member's OOF view probabilities, the identity view first."""
    return softmax(member.oof_logits[E.identity_first(member.views)])


def member_views(fold_logits: np.ndarray, view_names: list[str], opts: BlendOptions) -> np.ndarray:
    """(F, V, N, C) logits of one member's fold models under its TTA views -> the (V', N, C) view
    probabilities the blend reads: folds combined (`opts.fold_combine`), the identity view first, and
    with `--tta mean` the views already averaged (V' = 1)."""
    views = E.combine_folds(fold_logits[:, E.identity_first(list(view_names))], opts.fold_combine)
    return views.mean(axis=0, keepdims=True) if opts.tta == "mean" else views


def member_probs(model: FittedBlend, views: list[np.ndarray]) -> np.ndarray:
    """(K, N, C): each member's views combined by its identity weight, then its temperature applied."""
    probs = np.stack([E.combine_views(v, w) for v, w in zip(views, model.identity_weights)])
    if np.any(model.temperatures != 1.0):
        probs = np.stack([E.apply_temperature(p, t) for p, t in zip(probs, model.temperatures)])
    return probs


def fit_blend(views: list[np.ndarray], y: np.ndarray, fold: np.ndarray, opts: BlendOptions,
              names: list[str] | None = None, sample_weight: np.ndarray | None = None) -> FittedBlend:
    """Fit every step on these rows, each on the output of the steps before it (`names`: the members'),
    each row counted by `sample_weight` when given (importance weights)."""
    k, w = len(views), sample_weight
    model = FittedBlend.unfitted(names or [f"member_{i}" for i in range(k)], opts)
    model.identity_weights = [E.fit_identity_weight(v, y, sample_weight=w) if opts.tta == "weighted" else None
                              for v in views]
    probs = member_probs(model, views)
    if opts.temperature:
        model.temperatures = np.array([E.fit_temperature(E.safe_log(p), y, w) for p in probs])
        probs = member_probs(model, views)
    if opts.method == "scipy":
        model.weights = E.fit_scipy_weights(probs, y, w)
    elif opts.method == "greedy":
        model.weights = E.greedy_select(probs, y, opts.metric, opts.rounds, opts.greedy_init, sample_weight=w)
    if opts.method == "stack":
        # downstream steps are tuned on the stacker's inner-CV output, never on its in-sample fit
        model.stacker, combined = E.fit_stacker(probs, y, fold, inner_cv=opts.calibrate or opts.bias, sample_weight=w)
        model.weights = E.stacker_member_shares(model.stacker, k)
    else:
        combined = _combine(probs, model)
    if opts.calibrate:
        model.calibration = E.fit_temperature(E.safe_log(combined), y, w)
        combined = E.apply_temperature(combined, model.calibration)
    if opts.bias:
        model.biases = E.tune_biases(E.safe_log(combined), y, opts.metric, sample_weight=w)
    return model


def apply_blend(model: FittedBlend, views: list[np.ndarray]) -> np.ndarray:
    """(N, C) blend probabilities of rows whose members' view probabilities (`member_views`, in
    `model.members` order) are `views`; what the blend stage, predict, evaluate, serve and bundles run.

    `--method rank` ranks within the rows given: the same rows in give the same output."""
    if len(views) != len(model.members):
        raise ValueError(f"the blend combines {len(model.members)} members ({', '.join(model.members)}), "
                         f"given {len(views)}")
    if views[0].shape[1] == 0:  # no test set (a train-only task) or no held-out rows
        return np.zeros((0, views[0].shape[2]))
    combined = _combine(member_probs(model, views), model)
    if model.calibration != 1.0:
        combined = E.apply_temperature(combined, model.calibration)
    if model.biases is not None:
        combined = E.apply_biases(combined, model.biases)
    return combined


def nested_predictions(views: list[np.ndarray], y: np.ndarray, fold: np.ndarray, opts: BlendOptions,
                       fold_test_views=None, sample_weight=None, drop_biases: bool = False
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """For each fold k: fit on the other folds' OOF rows, predict fold k's rows; return them collected.

    With `fold_test_views(i)` (the members' test views from their i-th fold models), each fold's fitted
    pipeline also predicts the test: (F, M, C) as the second value (None without). `drop_biases`: each
    fold's pipeline is applied without its class biases (the last step), to see what they add."""
    out = np.zeros((len(y), views[0].shape[2]))
    tests = []
    for i, k in enumerate(np.unique(fold)):
        held_out = fold == k
        model = fit_blend(_rows(views, ~held_out), y[~held_out], fold[~held_out], opts,
                          sample_weight=None if sample_weight is None else sample_weight[~held_out])
        if drop_biases:
            model.biases = None
        out[held_out] = apply_blend(model, _rows(views, held_out))
        if fold_test_views is not None:
            tests.append(apply_blend(model, fold_test_views(i)))
    return out, (np.stack(tests) if fold_test_views is not None else None)


def _biases_earn_their_place(nested, unbiased, y, c, metric) -> tuple[bool, str]:
    """Class biases are kept only when the nested CV with them beats the one without (they are fitted to
    the OOF rows' class confusions, which a few hundred rows or a shifted test do not repeat)."""
    with_b, without = (classification_scores(y, p, c)[metric] for p in (nested, unbiased))
    better = with_b > without if HIGHER_IS_BETTER[metric] else with_b < without
    return better, ("" if better else f"class biases not applied: nested CV {metric} {without:.4f} without them, "
                                      f"{with_b:.4f} with them")


def fold_test_views(members: list[Member], fold: np.ndarray, opts: BlendOptions):
    """(a function i -> the members' test views predicted by their i-th fold models, as the blend reads
    them, "") or (None, why each fold's pipeline cannot predict the test as it predicted its OOF rows)."""
    n_folds = len(np.unique(fold))
    if not len(members[0].test_ids):
        return None, "no test set"
    if opts.method == "rank":
        return None, "--method rank turns probabilities into ranks within each set of images, not confidences"
    if opts.is_fitted and n_folds < 2:
        return None, "one fold: the fitted blend was never applied to rows it was not fitted on"
    odd = [m.name for m in members if m.test_logits.shape[0] != n_folds]
    if odd:
        return None, (f"{', '.join(odd)}: test predictions from {members[0].test_logits.shape[0]} fold models for "
                      f"{n_folds} folds (train it again on the current folds)")

    def views(i: int) -> list[np.ndarray]:
        out = [softmax(m.test_logits[i][E.identity_first(m.views)]) for m in members]
        return [v.mean(axis=0, keepdims=True) for v in out] if opts.tta == "mean" else out

    return views, ""


# ----------------------------------------------------------------------------- entry point on arrays

def _overfit_warnings(in_sample: dict, nested: dict, metric: str) -> list[str]:
    gap = in_sample[metric] - nested[metric]
    gap = gap if HIGHER_IS_BETTER[metric] else -gap
    if gap <= OVERFIT_WARNING_GAP:
        return []
    return [f"{metric}: in-sample {in_sample[metric]:.4f} vs nested {nested[metric]:.4f} "
            f"(gap {gap:.4f} > {OVERFIT_WARNING_GAP}): the fitted blend overfits the OOF rows; trust the nested number"]


def blend_arrays(members: list[Member], shift_warning: bool = False, **options) -> BlendResult:
    """`blend` with the options as keywords (`BlendOptions`' fields)."""
    return blend(members, BlendOptions(**options), shift_warning)


def _importance(opts: BlendOptions, shift_warning: bool, oof_views, fold, per_fold_test) -> dict:
    if opts.shift_weights == "off" or (opts.shift_weights == "auto" and not shift_warning):
        return {"weights": None, "why": "--shift-weights off" if opts.shift_weights == "off" else
                "the scan's shift check did not warn"}
    if not opts.is_fitted:
        return {"weights": None, "why": "nothing is fitted"}
    return importance_weights(oof_views, fold, per_fold_test)


def blend(members: list[Member], opts: BlendOptions, shift_warning: bool = False) -> BlendResult:
    """Blend aligned members; report in-sample and nested-CV scores side by side. With `shift_warning`
    (the scan says CV is optimistic) and `--shift-weights auto`, every step is fitted on importance-weighted rows."""
    check_alignment(members)
    ref, c = members[0], members[0].n_classes
    names = [m.name for m in members]
    y, fold = np.asarray(ref.labels), np.asarray(ref.fold)
    oof_views = [member_oof_views(m) for m in members]
    member_scores = {m.name: classification_scores(y, v.mean(axis=0), c) for m, v in zip(members, oof_views)}
    if opts.tta == "mean":  # nothing to fit across views: collapse them once
        oof_views = [v.mean(axis=0, keepdims=True) for v in oof_views]
    test_views = [member_views(m.test_logits, m.views, opts) for m in members]
    holdout_views = [member_views(m.holdout_logits, m.views, opts) for m in members]

    per_fold_test, no_confidence = fold_test_views(members, fold, opts)
    importance = _importance(opts, shift_warning, oof_views, fold, per_fold_test)
    sample_weight = importance["weights"]
    model = fit_blend(oof_views, y, fold, opts, names, sample_weight)
    in_sample_probs = apply_blend(model, oof_views)
    warnings: list[str] = []
    notes: list[str] = []
    if opts.is_fitted and len(np.unique(fold)) < 2:
        warnings.append("only one fold: no nested CV possible, the reported CV is in-sample")
    if opts.is_fitted and len(np.unique(fold)) >= 2:
        nested_probs, fold_test_probs = nested_predictions(oof_views, y, fold, opts, per_fold_test, sample_weight)
        if opts.bias:
            unbiased = nested_predictions(oof_views, y, fold, opts, per_fold_test, sample_weight, drop_biases=True)
            keep, why = _biases_earn_their_place(nested_probs, unbiased[0], y, c, opts.metric)
            if not keep:
                nested_probs, fold_test_probs = unbiased
                model.biases = None
                in_sample_probs = apply_blend(model, oof_views)
                notes.append(why)
    else:  # nothing fitted: one pipeline predicted every fold
        nested_probs = in_sample_probs
        fold_test_probs = (None if per_fold_test is None else
                           np.stack([apply_blend(model, per_fold_test(i)) for i in range(len(np.unique(fold)))]))
    if fold_test_probs is not None:
        fold_test_probs = fold_test_probs.astype(np.float32)
    cv_in_sample = classification_scores(y, in_sample_probs, c)
    cv_nested = classification_scores(y, nested_probs, c)
    warnings += _overfit_warnings(cv_in_sample, cv_nested, opts.metric)
    holdout_probs = apply_blend(model, holdout_views)
    return BlendResult(
        holdout_ids=ref.holdout_ids, holdout_labels=np.asarray(ref.holdout_labels), holdout_probs=holdout_probs,
        holdout_scores=holdout_scores(members, holdout_probs),
        oof_probs=nested_probs, test_probs=apply_blend(model, test_views), fold_test_probs=fold_test_probs,
        no_confidence=no_confidence,
        weights={n: float(w) for n, w in zip(names, model.weights)}, member_scores=member_scores,
        cv_in_sample=cv_in_sample, cv_nested=cv_nested, warnings=warnings, biases=model.biases,
        classes=list(ref.classes), ids=ref.ids, labels=y, test_ids=ref.test_ids, method=opts.method,
        options=asdict(opts), model=model, shift_warning=shift_warning, notes=notes,
        importance={k: v for k, v in importance.items() if k != "weights"} | {"applied": sample_weight is not None},
        fitted={"identity_weights": {n: (None if w is None else float(w))
                                     for n, w in zip(names, model.identity_weights)},
                "temperatures": {n: float(t) for n, t in zip(names, model.temperatures)},
                "calibration": float(model.calibration)})


def holdout_scores(members: list[Member], blend_probs: np.ndarray) -> dict:
    """Each member alone (its fold models and views averaged, as `evaluate --exp NAME` predicts) and the
    blend, scored on the held-out rows as `foldblend evaluate` scores a folder; {} without held-out rows."""
    ref = members[0]
    if len(ref.holdout_ids) == 0:
        return {}
    y, c = np.asarray(ref.holdout_labels), ref.n_classes

    def scores(probs):
        return classification_scores(y, probs, c, present_only=True)

    return {"n_images": int(len(y)), "blend": scores(blend_probs),
            "members": {m.name: scores(softmax(m.holdout_logits).mean(axis=(0, 1))) for m in members}}


# ----------------------------------------------------------------------------- files and CLI


def format_table(result: BlendResult, metric: str = "macro_f1") -> str:
    held = result.holdout_scores
    rows = [(name, s[metric], s[metric], held["members"][name][metric] if held else None)
            for name, s in result.member_scores.items()]
    rows.append((f"blend ({result.method})", result.cv_in_sample[metric], result.cv_nested[metric],
                 held["blend"][metric] if held else None))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'member':<{width}}  {'weight':>6}  {metric + ' in-sample':>20}  {'nested':>8}"
             + (f"  {'holdout':>8}" if held else "")]
    for name, ins, nested, holdout in rows:
        weight = result.weights.get(name)
        weight_text = f"{weight:6.3f}" if weight is not None else " " * 6
        lines.append(f"{name:<{width}}  {weight_text}  {ins:20.4f}  {nested:8.4f}"
                     + (f"  {holdout:8.4f}" if holdout is not None else ""))
    if held:
        lines.append(f"holdout: {held['n_images']} held-out images (folds.csv fold -1), never trained or fitted on; "
                     f"scored once here, like `foldblend evaluate`")
    return "\n".join(lines + [f"warning: {w}" for w in result.warnings])
