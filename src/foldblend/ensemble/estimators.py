"""Label-free estimates of a prediction's test macro-F1, from saved probabilities alone.

Each estimator reads one fold's pipeline twice -- on its OOF rows (labels known) and on the test images
(labels unknown) -- and says, per test image, how likely its predicted class is right. From those, per
predicted class, the expected true positives; the expected misses are spread over the classes as the
fold's OOF errors are; that gives a macro-F1 per fold, and the estimate is their mean (`fold_mean`).

- `atc`: average thresholded confidence (Garg et al., ICLR 2022): right when the top probability is
  above the OOF threshold that leaves as many OOF rows above it as were right (`confidence`).
- `doc`: difference of confidences (Guillory et al., ICCV 2021): the test's top probabilities, shifted by
  the fold's OOF accuracy minus its OOF mean top probability.
- `nuclear`: the prediction matrix's normalised nuclear norm ||P||_* / sqrt(n min(n, C)), high when
  predictions are both confident and spread over the classes (Deng et al., ICML 2023); the test's
  accuracy is the OOF accuracy moved by the difference of the two norms, the images' confidences moved
  to it (`scaled_to`).
- `cot`: optimal transport from the test's probability vectors to one-hot labels in the OOF class
  proportions, cost 1 - p_y (Lu et al., NeurIPS 2023: the cost estimates the error, and unlike a
  confidence it sees a label shift); corrected, as DoC, by the same cost's gap on the OOF rows.
- `aol`: agreement on the line (Baek et al., NeurIPS 2022), the one that reads no confidence: two members'
  agreement on a fold's OOF rows and on the test (each by that fold's models), in probit scale, lies on a
  line across the pairs, and the members' accuracies move along the same line. It needs two members or
  more (`agreement_line`); models confidently wrong on a new image source disagree there, which no
  confidence shows. The test's accuracy per fold is the OOF accuracy moved along the line, the images'
  confidences moved to it.

The fold average: the submission averages the fold models, which scores above one fold model. Taking
the fold models' mean probability q as the label distribution of each test image, the expected
macro-F1 of any decisions h is computed from counts (true positives sum q at h); the gain is that of
the file's decisions over the mean of the fold pipelines' own (`fold_average_gain`). Added to an
estimate, it gives the number of the file that is written (`file_estimate`).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logit
from scipy.stats import norm

from foldblend.ensemble.confidence import counted_correct
from foldblend.metrics import metric_from_counts

ESTIMATORS = ("atc", "doc", "nuclear", "cot", "aol")
COT_MAX_ROWS = 5000     # the transport problem on at most this many images (a random subset beyond)
LINE_MIN_MODELS = 3     # with fewer members the line's slope is not fitted (slope 1: the mean probit shift)
PROBIT_CLIP = 1e-3      # rates of 0 or 1 read as this far from them before the probit
SHIFT_BOUND = 30.0      # the logit shift `scaled_to` searches within


def _probit(rate):
    return norm.ppf(np.clip(rate, PROBIT_CLIP, 1 - PROBIT_CLIP))


def agreement_line(models: list[tuple[np.ndarray, np.ndarray]], fold: np.ndarray) -> dict | None:
    """{"slope", "bias", "points"} of the agreement line, from `models` [(OOF probs (N, C), per-fold test
    probs (F, M, C))]: for each fold and each pair of models, the probit of their agreement on the fold's
    OOF rows (x) and on the test by the fold's models (y), fitted by least squares; with fewer than
    `LINE_MIN_MODELS` models, or x without spread, the slope is 1 and the bias the mean shift. None with
    fewer than two models."""
    if len(models) < 2:
        return None
    fold = np.asarray(fold)
    decisions = [(np.asarray(oof).argmax(-1), np.asarray(test).argmax(-1)) for oof, test in models]
    xs, ys = [], []
    for i, k in enumerate(np.unique(fold)):
        rows = fold == k
        for (oof_a, test_a), (oof_b, test_b) in itertools.combinations(decisions, 2):
            xs.append(_probit(np.mean(oof_a[rows] == oof_b[rows])))
            ys.append(_probit(np.mean(test_a[i] == test_b[i])))
    xs, ys = np.asarray(xs), np.asarray(ys)
    if len(models) >= LINE_MIN_MODELS and xs.std() > 0.05:
        slope, bias = np.polyfit(xs, ys, 1)
    else:
        slope, bias = 1.0, float(np.mean(ys - xs))
    return {"slope": float(slope), "bias": float(bias), "points": len(xs)}


def _acc_conf(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float, float]:
    right = probs.argmax(axis=1) == y
    return right, float(right.mean()), float(probs.max(axis=1).mean())


def nuclear_score(probs: np.ndarray) -> float:
    n, c = probs.shape
    return float(np.linalg.svd(probs, compute_uv=False).sum() / np.sqrt(n * min(n, c))) if n else 0.0


def _cot_per_image(probs: np.ndarray, proportions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image, the probability the optimal plan (POT's exact network simplex) moves to the classes it
    sends the image to: 1 - each image's share of the transport cost (its mean is 1 - COT)."""
    for backend in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):  # numpy arrays only: skip importing the others
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{backend}", "1")
    import ot

    n, c = probs.shape
    rows = np.arange(n) if n <= COT_MAX_ROWS else rng.choice(n, COT_MAX_ROWS, replace=False)
    p = np.ascontiguousarray(probs[rows], np.float64)
    plan = ot.emd(np.full(len(rows), 1.0 / len(rows)), proportions / proportions.sum(), 1.0 - p,
                  numItermax=1_000_000) * len(rows)
    got = (plan * p).sum(axis=1)
    if n <= COT_MAX_ROWS:
        return got
    out = probs.max(axis=1) * (got.mean() / p.max(axis=1).mean())  # the subset's level, for every image
    out[rows] = got
    return out


def scaled_to(conf: np.ndarray, target: float) -> np.ndarray:
    """Confidences moved by one shift in logit scale until their mean is `target`: the images keep their
    order and the mean is kept exactly (scaling them would lose it to the clip at 1)."""
    z = logit(np.clip(conf, 1e-6, 1 - 1e-6))
    gap = lambda shift: float(np.mean(expit(z + shift))) - target  # noqa: E731
    if gap(-SHIFT_BOUND) >= 0 or gap(SHIFT_BOUND) <= 0:  # a target at 0 or 1: as far as the bound allows
        return expit(z + (-SHIFT_BOUND if gap(-SHIFT_BOUND) >= 0 else SHIFT_BOUND))
    return expit(z + brentq(gap, -SHIFT_BOUND, SHIFT_BOUND, xtol=1e-12))


def correct_per_image(name: str, y: np.ndarray, oof_probs: np.ndarray, test_probs: np.ndarray,
                      rng: np.random.Generator | None = None, line: dict | None = None) -> np.ndarray:
    """(M,) expected correctness of each test image's predicted class, by estimator `name` (`aol` reads
    the members' agreement `line`)."""
    right, acc, conf = _acc_conf(y, oof_probs)
    test_conf = test_probs.max(axis=1)
    if name == "atc":
        return counted_correct(oof_probs.max(axis=1), int(right.sum()), test_conf)
    if name == "doc":
        return np.clip(test_conf + (acc - conf), 0.0, 1.0)
    if name == "nuclear":
        return scaled_to(test_conf, float(np.clip(acc + nuclear_score(test_probs) - nuclear_score(oof_probs), 0, 1)))
    if name == "cot":
        rng = rng or np.random.default_rng(0)
        proportions = np.bincount(y, minlength=oof_probs.shape[1]).astype(np.float64)
        gap = acc - _cot_per_image(oof_probs, proportions, rng).mean()
        return np.clip(_cot_per_image(test_probs, proportions, rng) + gap, 0.0, 1.0)
    if name == "aol":
        if line is None:
            raise ValueError("the aol estimator needs the members' agreement line (two members or more)")
        return scaled_to(test_conf, float(norm.cdf(line["slope"] * _probit(acc) + line["bias"])))
    raise ValueError(f"unknown estimator {name!r} (estimators: {', '.join(ESTIMATORS)})")


def coherent(correct: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(F, M) per-image correctness of F fold pipelines made coherent across them: where they predict different
    classes for an image at most one class is its label, so the per-class chances (each the mean correctness
    of the pipelines predicting that class) may sum to 1 at most; an image's correctness is divided by their
    sum where it is above 1. Pipelines that agree are left as they are; confident ones that disagree can no
    longer all be counted right (e.g. two of five at 0.99 for one class, three at 0.99 for another: 0.5 each,
    between the 0.4 and 0.6 that can be true)."""
    correct, pred = np.asarray(correct, np.float64), np.asarray(pred)
    f, m = correct.shape
    total = np.zeros((m, n_classes))
    count = np.zeros((m, n_classes))
    rows = np.broadcast_to(np.arange(m), (f, m))
    np.add.at(total, (rows, pred), correct)
    np.add.at(count, (rows, pred), 1.0)
    chance = np.divide(total, count, out=np.zeros_like(total), where=count > 0).sum(axis=1)
    return correct / np.maximum(chance, 1.0)


def f1_from_correct(y: np.ndarray, oof_right: np.ndarray, correct: np.ndarray, test_pred: np.ndarray,
                    n_classes: int) -> float:
    """Macro-F1 of decisions `test_pred` right with probabilities `correct`; the misses spread over the
    classes as the OOF errors (`oof_right` False) are."""
    true_pos = np.bincount(test_pred, weights=correct, minlength=n_classes)
    predicted = np.bincount(test_pred, minlength=n_classes).astype(np.float64)
    errors = np.bincount(y[~oof_right], minlength=n_classes).astype(np.float64)
    share = errors / errors.sum() if errors.sum() else np.full(n_classes, 1.0 / n_classes)
    missed = (1.0 - correct).sum() * share
    return float(metric_from_counts("macro_f1", true_pos[None], predicted[None], true_pos + missed)[0])


class FoldParts:
    """One candidate's per-fold pieces, computed once: labels, OOF rightness, each estimator's per-image
    correctness and the test decisions. Bootstrap draws resample these (the transport plan is not re-solved)."""

    def __init__(self, y, oof_probs, fold, fold_test_probs, estimators=ESTIMATORS, seed: int = 0, line=None,
                 coherent_for: tuple = ()):
        y, fold = np.asarray(y), np.asarray(fold)
        self.folds = np.unique(fold)
        if len(self.folds) != len(fold_test_probs):
            raise ValueError(f"{len(self.folds)} folds but test predictions from {len(fold_test_probs)} pipelines")
        self.n_classes = oof_probs.shape[1]
        self.parts = []
        rng = np.random.default_rng(seed)
        for i, k in enumerate(self.folds):
            rows = fold == k
            yk, ok, tk = y[rows], np.asarray(oof_probs[rows], np.float64), np.asarray(fold_test_probs[i], np.float64)
            self.parts.append({"y": yk, "right": ok.argmax(axis=1) == yk, "pred": tk.argmax(axis=1),
                               "correct": {e: correct_per_image(e, yk, ok, tk, rng, line) for e in estimators}})
        if len(self.parts) > 1:  # the fold pipelines cannot all be right where they disagree (`coherent`)
            pred = np.stack([part["pred"] for part in self.parts])
            for e in set(estimators) & set(coherent_for):
                fixed = coherent(np.stack([part["correct"][e] for part in self.parts]), pred, self.n_classes)
                for part, row in zip(self.parts, fixed):
                    part["correct"][e] = row

    def estimate(self, name: str, test_rows: np.ndarray | None = None) -> float:
        vals = []
        for part in self.parts:
            rows = slice(None) if test_rows is None else test_rows
            vals.append(f1_from_correct(part["y"], part["right"], part["correct"][name][rows], part["pred"][rows],
                                        self.n_classes))
        return float(np.mean(vals))


def expected_f1(decisions: np.ndarray, q: np.ndarray) -> float:
    """Macro-F1 of `decisions` if each image's label were drawn from `q` (M, C), from expected counts."""
    c = q.shape[1]
    true_pos = np.bincount(decisions, weights=q[np.arange(len(decisions)), decisions], minlength=c)
    predicted = np.bincount(decisions, minlength=c).astype(np.float64)
    return float(metric_from_counts("macro_f1", true_pos[None], predicted[None], q.sum(axis=0))[0])


def fold_average_gain(fold_test_probs: np.ndarray, file_probs: np.ndarray) -> float:
    """How much the written file's decisions score above one fold pipeline's, with the fold pipelines'
    mean probability as each test image's label distribution (label-free)."""
    fold_test_probs = np.asarray(fold_test_probs, np.float64)
    if len(fold_test_probs) < 2 or fold_test_probs.shape[1] == 0:
        return 0.0
    q = fold_test_probs.mean(axis=0)
    single = np.mean([expected_f1(p.argmax(axis=1), q) for p in fold_test_probs])
    return float(expected_f1(np.asarray(file_probs).argmax(axis=1), q) - single)
