"""Importance weights: OOF rows counted as often as the test has images like them (covariate-shift correction).

When the scan's check warns that CV is optimistic, the rows the blend is fitted on do not look like the
test, and weights, TTA view weights, temperatures and biases fitted on them follow the training
distribution. Reweighting each OOF row by the density ratio p_test(x) / p_oof(x) makes the fitted loss
an estimate of the test's (Shimodaira 2000; Sugiyama et al. 2007, KLIEP). The ratio is the odds of a
classifier told to separate the two sets (adversarial validation): w = P(test | x) / P(oof | x) *
n_oof / n_test (Bickel et al. 2009).

What x is here: what the blend itself sees -- every member's predicted probabilities, as each fold's
models predict both their own OOF rows and the test images (the same models on both sides, so the
classifier reads how the models' outputs differ between the two, not which models made them). A style
the models never saw makes them unsure; the OOF rows where they are as unsure as on the test get the
weight. The weights are clipped at `CLIP` times their mean and normalised to mean 1; the effective
sample size (sum w)^2 / sum w^2 says how many rows the fit still rests on.
"""
from __future__ import annotations

import numpy as np

from foldblend.metrics import clip_probs

CLIP = 10.0            # no row counts more than this many times the average row
MIN_ROWS = 20          # on fewer OOF or test rows the classifier says nothing


def _features(views: list[np.ndarray]) -> np.ndarray:
    """(N, K*C + 2K): each member's log-probabilities (its views averaged), top probability and entropy."""
    parts = []
    for v in views:
        p = clip_probs(v.mean(axis=0))
        logp = np.log(p)
        parts += [logp, p.max(axis=1, keepdims=True), -(p * logp).sum(axis=1, keepdims=True)]
    return np.concatenate(parts, axis=1)


def importance_weights(oof_views: list[np.ndarray], fold: np.ndarray, fold_test_views, seed: int = 0) -> dict:
    """{"weights": (N,) mean 1 or None, "ess", "auc", "why"}.

    `oof_views[k]` is member k's (V, N, C) OOF view probabilities; `fold_test_views(i)` the members' test
    views from their i-th fold models (folds in sorted order), as `pipeline.fold_test_views` gives."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    fold = np.asarray(fold)
    folds = np.unique(fold)
    if fold_test_views is None:
        return {"weights": None, "ess": None, "auc": None, "why": "no test predictions per fold model"}
    x_oof = _features(oof_views)
    x_test = np.concatenate([_features(fold_test_views(i)) for i in range(len(folds))])
    if len(x_oof) < MIN_ROWS or len(x_test) < MIN_ROWS:
        return {"weights": None, "ess": None, "auc": None, "why": f"fewer than {MIN_ROWS} OOF or test rows"}
    x = StandardScaler().fit_transform(np.concatenate([x_oof, x_test]))
    is_test = np.r_[np.zeros(len(x_oof), int), np.ones(len(x_test), int)]
    with threadpool_limits(limits=1, user_api="blas"):
        p = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), x, is_test, method="predict_proba",
                              cv=StratifiedKFold(5, shuffle=True, random_state=seed))[:, 1]
    auc = float(roc_auc_score(is_test, p))
    p_oof = np.clip(p[: len(x_oof)], 1e-6, 1 - 1e-6)
    odds = p_oof / (1 - p_oof) * (len(x_oof) / len(x_test))
    w = odds / odds.mean()
    for _ in range(20):  # clip, renormalise, until no row exceeds the clip
        if w.max() <= CLIP * (1 + 1e-9):
            break
        w = np.minimum(w, CLIP)
        w = w / w.mean()
    ess = float(w.sum() ** 2 / (w ** 2).sum())
    return {"weights": w, "ess": ess, "auc": auc, "why": ""}


def describe(info: dict, n_rows: int) -> str:
    """'importance weights: members' outputs tell test from OOF at ROC AUC 0.81; effective sample 412 of 960'."""
    if not info.get("applied"):
        return f"importance weights: not used ({info.get('why') or 'no shift warning'})"
    return (f"importance weights (OOF rows weighted to look like the test): the members' outputs tell test from "
            f"OOF at ROC AUC {info['auc']:.2f}; effective sample {info['ess']:.0f} of {n_rows} rows")
