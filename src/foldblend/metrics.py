"""Scores shared by training and blending.

Two kinds of scorer live here. `classification_scores` is the reference: scikit-learn, one call, used
for every number that is reported. `METRICS` holds decision metrics computed from per-class counts with
`np.bincount`; they accept a batch of candidate predictions `(K, N)` at once, because the weight search
and the bias tuning score thousands of candidates and sklearn per candidate would dominate the run.
`tests/test_metrics.py` checks that the two agree.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss

PROB_EPS = 1e-15  # clip before log: one confident miss must not make log-loss infinite


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the max, so large logits do not overflow)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log of softmax; exact where log(softmax(x)) would underflow to -inf."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def clip_probs(probs: np.ndarray, eps: float = PROB_EPS) -> np.ndarray:
    """Clip into [eps, 1] and renormalise rows, so logs are finite and rows still sum to one."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


def classification_scores(y_true: np.ndarray, probs: np.ndarray, n_classes: int,
                          present_only: bool = False) -> dict:
    """The reported scores of one set of probabilities (argmax decisions for the F1s and accuracy).

    F1 averages run over every class, or with `present_only` over the classes true or predicted in
    these rows (scikit-learn's classification_report default, what `foldblend evaluate` prints).
    """
    y_true = np.asarray(y_true)
    probs = clip_probs(probs)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))
    f1_labels = sorted(set(y_true.tolist()) | set(y_pred.tolist())) if present_only else labels
    f1 = {avg: float(f1_score(y_true, y_pred, labels=f1_labels, average=avg, zero_division=0))
          for avg in ("macro", "micro", "weighted")}
    return {
        "macro_f1": f1["macro"],
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
        "micro_f1": f1["micro"],
        "weighted_f1": f1["weighted"],
    }


# ----------------------------------------------------------------------------- fast decision metrics

def _class_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None, sample_weight=None):
    """Per-candidate, per-class true positives, predicted counts and the true counts, via bincount.

    y_pred is (N,) or (K, N); the counts come back as (K, C) (K = 1 for a single prediction). With
    `sample_weight` (N,), each row counts its weight (sklearn's `sample_weight`).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.atleast_2d(np.asarray(y_pred, dtype=np.int64))
    k, n = y_pred.shape
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    flat = (np.arange(k, dtype=np.int64)[:, None] * n_classes + y_pred).ravel()
    hit = (y_pred == y_true[None, :]).ravel()
    w = None if sample_weight is None else np.tile(np.asarray(sample_weight, np.float64), k)
    predicted = np.bincount(flat, weights=w, minlength=k * n_classes).reshape(k, n_classes)
    true_pos = np.bincount(flat[hit], weights=None if w is None else w[hit],
                           minlength=k * n_classes).reshape(k, n_classes)
    support = np.bincount(y_true, weights=sample_weight, minlength=n_classes)
    return true_pos, predicted, support


def _per_class_f1(true_pos, predicted, support) -> np.ndarray:
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (predicted + support); 0 where both are empty (zero_division=0)
    denom = predicted + support[None, :]
    return np.divide(2.0 * true_pos, denom, out=np.zeros(true_pos.shape), where=denom > 0)


def metric_from_counts(metric: str, true_pos: np.ndarray, predicted: np.ndarray, support: np.ndarray) -> np.ndarray:
    """A decision metric for K candidates from their (K, C) true-positive and predicted counts.

    Lets a search that can count cheaply (e.g. all bias values of one class at once) skip the labels.
    """
    total = support.sum()
    if metric in ("accuracy", "micro_f1"):
        return true_pos.sum(axis=1) / total
    f1 = _per_class_f1(true_pos, predicted, support)
    if metric == "macro_f1":
        return f1.mean(axis=1)
    if metric == "weighted_f1":
        return f1 @ support / total if total > 0 else np.zeros(len(f1))
    raise ValueError(f"unknown decision metric {metric!r}")


def _from_labels(metric: str, y_true, y_pred, n_classes, sample_weight=None):
    values = metric_from_counts(metric, *_class_counts(y_true, y_pred, n_classes, sample_weight))
    return float(values[0]) if np.ndim(y_pred) == 1 else values


def macro_f1(y_true, y_pred, n_classes: int | None = None, sample_weight=None):
    """Unweighted mean of per-class F1 over all `n_classes` (sklearn `average="macro"`), rows counted
    by `sample_weight` when given."""
    return _from_labels("macro_f1", y_true, y_pred, n_classes, sample_weight)


def weighted_f1(y_true, y_pred, n_classes: int | None = None, sample_weight=None):
    """Per-class F1 weighted by true support (sklearn `average="weighted"`)."""
    return _from_labels("weighted_f1", y_true, y_pred, n_classes, sample_weight)


def accuracy(y_true, y_pred, n_classes: int | None = None, sample_weight=None):
    """Share of correct decisions; equals micro-F1 for single-label multiclass."""
    return _from_labels("accuracy", y_true, y_pred, n_classes, sample_weight)


MetricFn = Callable[..., "float | np.ndarray"]

METRICS: dict[str, MetricFn] = {
    "macro_f1": macro_f1,
    "micro_f1": accuracy,  # every label is one of range(C), so micro-F1 == accuracy exactly
    "weighted_f1": weighted_f1,
    "accuracy": accuracy,
}

HIGHER_IS_BETTER = {"macro_f1": True, "micro_f1": True, "weighted_f1": True, "accuracy": True, "log_loss": False}


def score(y_true: np.ndarray, probs: np.ndarray, metric: str, n_classes: int) -> float:
    """One number for `metric` on probabilities: log-loss on the probabilities, the rest on argmax."""
    if metric == "log_loss":
        p = clip_probs(probs)
        return float(-np.log(p[np.arange(len(y_true)), np.asarray(y_true)]).mean())
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(HIGHER_IS_BETTER)}")
    return float(METRICS[metric](y_true, np.asarray(probs).argmax(axis=-1), n_classes))
