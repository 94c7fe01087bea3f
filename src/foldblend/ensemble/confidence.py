"""The confidence estimate: the test score predicted from how sure the fold models are on the test images.

The test-matched CV (`matched`) re-weights OOF rows by how far each image is from its training data in
a frozen backbone's embedding space. It cannot see a sibling the backbone does not rank as a neighbour
(the same concept in another style), though the trained model still uses what siblings share. The
model's own confidence can: on images unlike anything it learnt from, it is less sure.

Average thresholded confidence (ATC; Garg et al., "Leveraging Unlabeled Data to Predict
Out-of-Distribution Performance", ICLR 2022), per fold k:

- the blend's OOF predictions of fold k come from one pipeline: each member's fold-k model (which never
  saw fold k) combined by the blend fitted without fold k. The same pipeline predicts every test image;
- on fold k's OOF rows, the threshold t_k is the top-probability quantile that leaves exactly as many
  rows above it as were predicted correctly;
- a test image predicted above t_k counts as correct. Per predicted class, those are the true positives
  and the rest the false positives; the misses (false negatives) are spread over the classes as fold
  k's OOF errors are. That gives a macro-F1 (and an accuracy) per fold; the estimate is their mean.

A bootstrap over OOF groups and test images gives its spread. What it cannot see: a model wrong with
the confidence it has when right (a label shift it was never shown). One fold model is what it
describes; the submission averages the fold models, which usually scores a little higher (0.01-0.03
macro-F1 on `bench/cv_honesty.py`).
"""
from __future__ import annotations

import numpy as np

from foldblend.ensemble.matched import describe as describe_matched
from foldblend.ensemble.matched import group_draws
from foldblend.metrics import metric_from_counts

N_BOOTSTRAP = 200
MEMBER_MARGIN = 0.02    # a member must beat the blend's estimate by this much, at least, to be named


def counted_correct(oof_conf: np.ndarray, n_right: int, test_conf: np.ndarray) -> np.ndarray:
    """Per test image, 1 where its confidence lies above the OOF threshold that leaves `n_right` of the
    OOF rows above it, else 0; a test confidence equal to a block of tied OOF ones gets the share of
    that block above the threshold, so the OOF rows themselves always count `n_right` of them right.
    (Counts, not fractions: a rounding error must not move an image across the threshold.)"""
    ordered = np.sort(np.asarray(oof_conf, np.float64))
    n_wrong = len(ordered) - int(n_right)      # OOF rows below the threshold
    below = np.searchsorted(ordered, test_conf, side="left")
    up_to = np.searchsorted(ordered, test_conf, side="right")
    tied = up_to - below
    share = np.clip((up_to - n_wrong) / np.maximum(tied, 1), 0.0, 1.0)
    return np.where(tied > 0, share, (below > n_wrong).astype(np.float64))


def fold_estimate(y: np.ndarray, oof_probs: np.ndarray, test_conf: np.ndarray, test_pred: np.ndarray,
                  n_classes: int) -> tuple[float, float]:
    """(macro-F1, accuracy) predicted for one fold's pipeline on the test (its top probability and
    predicted class per test image), from its OOF rows (ATC)."""
    right = oof_probs.argmax(axis=1) == y
    correct = counted_correct(oof_probs.max(axis=1), int(right.sum()), test_conf)
    true_pos = np.bincount(test_pred, weights=correct, minlength=n_classes)
    predicted = np.bincount(test_pred, minlength=n_classes).astype(np.float64)
    errors = np.bincount(y[~right], minlength=n_classes).astype(np.float64)
    missed = (1.0 - correct).sum() * (errors / errors.sum() if errors.sum() else np.full(n_classes, 1.0 / n_classes))
    f1 = metric_from_counts("macro_f1", true_pos[None], predicted[None], true_pos + missed)[0]
    return float(f1), float(correct.mean())


def _estimate(y, oof_probs, fold, test_conf, test_pred, folds, n_classes) -> tuple[float, float]:
    parts = [fold_estimate(y[fold == k], oof_probs[fold == k], test_conf[i], test_pred[i], n_classes)
             for i, k in enumerate(folds)]
    return float(np.mean([p[0] for p in parts])), float(np.mean([p[1] for p in parts]))


def confidence_score(y: np.ndarray, oof_probs: np.ndarray, fold: np.ndarray, fold_test_probs: np.ndarray,
                     groups: np.ndarray | None = None, n_classes: int | None = None, n_boot: int = N_BOOTSTRAP,
                     seed: int = 0) -> dict:
    """The confidence estimate of macro-F1 and accuracy, with bootstrap standard deviations.

    `fold_test_probs[i]` (F, M, C) is the test prediction of the pipeline that predicted the OOF rows of
    the i-th fold in sorted order. Each bootstrap draw resamples whole groups of OOF rows (`groups`;
    default: every row its own) and the test images.
    """
    y, oof_probs, fold = np.asarray(y), np.asarray(oof_probs, np.float64), np.asarray(fold)
    n_classes = n_classes or oof_probs.shape[1]
    folds = np.unique(fold)
    if len(folds) != len(fold_test_probs):
        raise ValueError(f"{len(folds)} folds but test predictions from {len(fold_test_probs)} fold pipelines")
    # all the estimate reads of the test: each pipeline's top probability and class per image, (F, M) each
    test_conf, test_pred = np.asarray(fold_test_probs).max(axis=2), np.asarray(fold_test_probs).argmax(axis=2)
    f1, acc = _estimate(y, oof_probs, fold, test_conf, test_pred, folds, n_classes)
    rng = np.random.default_rng(seed)
    m = test_conf.shape[1]
    draws = []
    for rows in group_draws(np.arange(len(y)) if groups is None else groups, n_boot, rng):
        test_rows = rng.integers(0, m, m)
        if len(np.unique(fold[rows])) == len(folds):  # a draw that lost a whole fold says nothing about it
            draws.append(_estimate(y[rows], oof_probs[rows], fold[rows], test_conf[:, test_rows],
                                   test_pred[:, test_rows], folds, n_classes))
    spread = np.std(draws, axis=0) if draws else (None, None)
    return {"macro_f1": f1, "std": None if spread[0] is None else float(spread[0]), "accuracy": acc,
            "accuracy_std": None if spread[1] is None else float(spread[1]), "n_folds": int(len(folds)),
            "n_test": int(m), "n_bootstrap": len(draws)}


def describe(estimate: dict) -> str:
    """'confidence estimate 0.71 ± 0.02'."""
    text = f"confidence estimate {estimate['macro_f1']:.4f}"
    return text + (f" ± {estimate['std']:.4f}" if estimate.get("std") is not None else "")


def describe_estimates(test_matched: dict | None, confidence: dict | None) -> str:
    """'test-matched 0.67 ± 0.02 · confidence estimate 0.66 ± 0.02', of the estimates there are ('' if none)."""
    parts = ([describe_matched(test_matched)] if test_matched else []) + ([describe(confidence)] if confidence else [])
    return " · ".join(parts)


def members_above(blend: dict, members: dict[str, dict], margin: float = MEMBER_MARGIN) -> list[tuple[str, dict]]:
    """The members whose own confidence estimate is above the blend's by more than `margin` and by more
    than twice their spread, best first: under a shift the OOF-fitted weights may not carry to the test."""
    out = [(name, est) for name, est in members.items()
           if est["macro_f1"] - blend["macro_f1"] > max(margin, 2 * (est.get("std") or 0.0))]
    return sorted(out, key=lambda item: -item[1]["macro_f1"])


def member_note(blend: dict | None, members: dict[str, dict] | None) -> str | None:
    """'note: X alone is estimated above the blend on the test ...', or None."""
    above = members_above(blend, members or {}) if blend else []
    if not above:
        return None
    name, est = above[0]
    return (f"note: {name} alone has a higher confidence estimate on the test than the blend ({est['macro_f1']:.4f} vs "
            f"{blend['macro_f1']:.4f}): the weights were fitted on OOF rows the test may not resemble; "
            f"`foldblend submit --exp {name}` submits it alone")
