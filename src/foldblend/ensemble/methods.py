"""Numeric ensembling methods: pure numpy/scipy functions on probability arrays.

Shapes: one member's TTA views are `(V, N, C)`; members stacked are `(K, N, C)`; labels `(N,)`.
Everything here works on probabilities (rows sum to one) except where a name says log-probabilities.
Nothing here reads files or knows about folds' meaning; `blend` orchestrates and scores honestly.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.stats import rankdata

from foldblend.metrics import METRICS, clip_probs, log_softmax, metric_from_counts, softmax

COMBINE_METHODS = ("mean", "logit_mean", "rank", "power", "scipy", "greedy", "stack")
IDENTITY_WEIGHT_GRID = np.linspace(0.0, 1.0, 11)
BIAS_GRID = np.round(np.linspace(-3.0, 3.0, 61), 10)


def safe_log(probs: np.ndarray) -> np.ndarray:
    return np.log(clip_probs(probs))


def true_class_probs(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """probs[..., n, y[n]]: all that log-loss needs, so weight searches never touch the other classes."""
    y = np.asarray(y)
    return probs[..., np.arange(len(y)), y]


# ----------------------------------------------------------------------------- views and folds

def identity_first(views: list[str]) -> list[int]:
    """View order with the un-augmented view first (`--tta weighted` weighs view 0 against the rest)."""
    first = views.index("identity") if "identity" in views else 0
    return [first] + [i for i in range(len(views)) if i != first]


def combine_views(view_probs: np.ndarray, identity_weight: float | None = None) -> np.ndarray:
    """Mean over TTA views, or `w * view0 + (1 - w) * mean(other views)` (view 0 = the un-augmented one)."""
    if identity_weight is None or len(view_probs) == 1:
        return view_probs.mean(axis=0)
    return identity_weight * view_probs[0] + (1.0 - identity_weight) * view_probs[1:].mean(axis=0)


def _mean(values: np.ndarray, sample_weight=None, axis=-1) -> np.ndarray:
    """Mean over rows (the last axis), each row counted by `sample_weight` when given (importance weights)."""
    return np.mean(values, axis=axis) if sample_weight is None else np.average(values, axis=axis, weights=sample_weight)


def fit_identity_weight(view_probs: np.ndarray, y: np.ndarray, grid=IDENTITY_WEIGHT_GRID, sample_weight=None) -> float:
    """Weight of the identity view that minimises OOF log-loss (smooth, so less noisy than F1 on a grid)."""
    if len(view_probs) == 1:
        return 1.0
    p_true = true_class_probs(view_probs, y)                      # (V, N)
    mixes = grid[:, None] * p_true[0] + (1 - grid[:, None]) * p_true[1:].mean(axis=0)
    losses = -_mean(np.log(np.clip(mixes, 1e-15, 1.0)), sample_weight)
    return float(grid[int(np.argmin(losses))])


def combine_folds(test_logits: np.ndarray, how: str = "prob_mean") -> np.ndarray:
    """(F, V, M, C) logits of every fold model -> (V, M, C) probabilities.

    `prob_mean` averages each fold model's probabilities; `logit_mean` averages logits first (a
    geometric mean, sharper when the fold models agree).
    """
    if how == "prob_mean":
        return softmax(test_logits).mean(axis=0)
    if how == "logit_mean":
        return softmax(np.asarray(test_logits, dtype=np.float64).mean(axis=0))
    raise ValueError(f"unknown fold combination {how!r}; choose prob_mean or logit_mean")


# ----------------------------------------------------------------------------- unfitted combinations

def _normalised(weights, k: int) -> np.ndarray:
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def mean_probs(member_probs: np.ndarray, weights=None) -> np.ndarray:
    """Weighted arithmetic mean of probabilities (equal weights by default)."""
    return np.tensordot(_normalised(weights, len(member_probs)), member_probs, axes=1)


def logit_mean(member_probs: np.ndarray, weights=None) -> np.ndarray:
    """Geometric mean: average log-probabilities, then softmax. Rewards agreement, punishes a veto."""
    return softmax(np.tensordot(_normalised(weights, len(member_probs)), safe_log(member_probs), axes=1))


def rank_average(member_probs: np.ndarray, weights=None) -> np.ndarray:
    """Per class, rank each member's scores over the rows (scaled to (0, 1]), average, renormalise rows.

    Ignores how calibrated each member is; only orderings count. Ranks are taken within the rows
    given (the test set is ranked within itself), so the output is a score, not a calibrated probability.
    """
    n = member_probs.shape[1]
    ranks = rankdata(member_probs, axis=1) / n
    averaged = np.tensordot(_normalised(weights, len(member_probs)), ranks, axes=1)
    return averaged / averaged.sum(axis=1, keepdims=True)


def power_mean(member_probs: np.ndarray, power: float = 2.0, weights=None) -> np.ndarray:
    """Mean of p**k, renormalised: k > 1 lets confident members speak louder."""
    averaged = np.tensordot(_normalised(weights, len(member_probs)), member_probs ** power, axes=1)
    return averaged / averaged.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- fitted weights

def fit_scipy_weights(member_probs: np.ndarray, y: np.ndarray, sample_weight=None) -> np.ndarray:
    """Weights >= 0 summing to 1 that minimise log-loss of the weighted mean (SLSQP, analytic gradient)."""
    k = len(member_probs)
    p_true = np.clip(true_class_probs(member_probs, y), 1e-15, 1.0)   # (K, N)

    def loss_and_grad(w):
        mix = np.clip(w @ p_true, 1e-15, None)
        return -_mean(np.log(mix), sample_weight), -_mean(p_true / mix, sample_weight)

    result = minimize(loss_and_grad, np.full(k, 1.0 / k), jac=True, method="SLSQP",
                      bounds=[(0.0, 1.0)] * k,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(k)}])
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


def _candidate_scores(running_sum, n_summed, member_probs, y, metric, n_classes, chunk_elems=8_000_000,
                      sample_weight=None):
    """Score of the mean of (`running_sum` of `n_summed` members + member k) for every k.

    Higher is better for every metric: for log-loss it returns the mean log-probability of the truth.
    Candidates are scored in chunks so memory stays bounded however many members there are.
    """
    k, n, c = member_probs.shape
    if metric == "log_loss":
        mix = (true_class_probs(running_sum[None], y) + true_class_probs(member_probs, y)) / (n_summed + 1)
        return _mean(np.log(np.clip(mix, 1e-15, None)), sample_weight)
    step = max(1, chunk_elems // (n * c))
    scores = np.empty(k)
    for start in range(0, k, step):
        decisions = (running_sum[None] + member_probs[start:start + step]).argmax(axis=2)
        scores[start:start + step] = METRICS[metric](y, decisions, n_classes, sample_weight=sample_weight)
    return scores


def greedy_select(member_probs: np.ndarray, y: np.ndarray, metric: str = "macro_f1", rounds: int = 100,
                  max_init: int = 5, sample_weight=None) -> np.ndarray:
    """Caruana et al. (2004) ensemble selection: weights = how often each member was picked.

    Sorted initialisation puts the best n members in (n <= max_init chosen on the same data, as in the
    paper), then each round adds, with replacement, the member whose addition scores best; ties go to
    the better member alone. Picking with replacement is what makes the weights; a fixed number of
    rounds keeps it cheap and reproducible.
    """
    k, n, c = member_probs.shape
    if metric != "log_loss" and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} for greedy selection")
    probs = member_probs.astype(np.float32)  # decisions only; halves memory traffic
    w = sample_weight
    alone = _candidate_scores(np.zeros((n, c), np.float32), 0, probs, y, metric, c, sample_weight=w)
    order = np.argsort(-alone, kind="stable")
    probs = probs[order]                      # from here on, index i means member order[i]
    init_scores = [_candidate_scores(probs[:m - 1].sum(axis=0), m - 1, probs[m - 1:m], y, metric, c, sample_weight=w)[0]
                   for m in range(1, min(max_init, k) + 1)]
    n_init = int(np.argmax(init_scores)) + 1
    counts = np.zeros(k, dtype=np.int64)
    counts[:n_init] = 1
    running_sum = probs[:n_init].sum(axis=0)
    for _ in range(rounds):
        best = int(np.argmax(_candidate_scores(running_sum, counts.sum(), probs, y, metric, c, sample_weight=w)))
        counts[best] += 1
        running_sum += probs[best]
    weights = np.empty(k)
    weights[order] = counts / counts.sum()
    return weights


# ----------------------------------------------------------------------------- calibration and decisions

def fit_temperature(log_probs: np.ndarray, y: np.ndarray, sample_weight=None) -> float:
    """Temperature T minimising log-loss of softmax(log_probs / T); argmax is unchanged, confidence is fixed."""
    def loss(log_t):
        return -_mean(true_class_probs(log_softmax(log_probs / np.exp(log_t)), y), sample_weight)

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(safe_log(probs) / temperature)


def scores_over_bias_grid(own, best_other, best_other_idx, y, cls, grid, metric, n_classes,
                          sample_weight=None) -> np.ndarray:
    """`metric` for every grid value of class `cls`'s bias, from counts in O(N + G*C), not O(G*N).

    A row switches to `cls` exactly when own + g > best_other, i.e. from grid index t onwards (t = the
    first g above the row's margin). Histograms of t per class, summed from either end, give every
    grid value's true-positive and predicted counts at once.
    """
    g, c = len(grid), n_classes
    t = np.searchsorted(grid, best_other - own, side="right")            # (N,) in [0, G]
    hit = best_other_idx == y
    cell = t * c + best_other_idx
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    stay_pred = np.bincount(cell, weights=w, minlength=(g + 1) * c).reshape(g + 1, c)
    stay_tp = np.bincount(cell[hit], weights=w[hit], minlength=(g + 1) * c).reshape(g + 1, c)
    # rows with t > i still go to their best other class at grid index i: suffix sums over t
    predicted = np.cumsum(stay_pred[::-1], axis=0)[::-1][1:].copy()      # (G, C)
    true_pos = np.cumsum(stay_tp[::-1], axis=0)[::-1][1:].copy()
    predicted[:, cls] += np.cumsum(np.bincount(t, weights=w, minlength=g + 1))[:g]
    true_pos[:, cls] += np.cumsum(np.bincount(t[y == cls], weights=w[y == cls], minlength=g + 1))[:g]
    return metric_from_counts(metric, true_pos, predicted, np.bincount(y, weights=w, minlength=c))


def tune_biases(log_probs: np.ndarray, y: np.ndarray, metric: str = "macro_f1", grid=BIAS_GRID,
                passes: int = 3, sample_weight=None) -> np.ndarray:
    """Per-class additive biases on log-probabilities that maximise `metric` of the argmax decisions.

    Coordinate ascent: for class c, every grid value is scored at once, then the next class. A value
    is only changed for a strict gain, and ties go to the smallest |bias|, so noise cannot drag biases
    around. Biases shift decisions toward under-predicted classes, which is what macro-F1 rewards.
    """
    if metric not in METRICS:
        raise ValueError(f"bias tuning needs a decision metric, one of {sorted(METRICS)}; got {metric!r}")
    n, c = log_probs.shape
    y = np.asarray(y, dtype=np.int64)
    biases = np.zeros(c)
    grid = np.sort(np.asarray(grid, dtype=np.float64))
    scores = log_probs + biases
    for _ in range(passes):
        changed = False
        for cls in range(c):
            own = scores[:, cls].copy()
            scores[:, cls] = -np.inf
            best_other, best_other_idx = scores.max(axis=1), scores.argmax(axis=1)
            values = scores_over_bias_grid(log_probs[:, cls], best_other, best_other_idx, y, cls, grid, metric, c,
                                           sample_weight)
            decided = np.where(own > best_other, cls, best_other_idx)
            current = METRICS[metric](y, decided, c, sample_weight=sample_weight)
            if values.max() > current + 1e-12:
                ties = np.flatnonzero(values >= values.max() - 1e-12)
                biases[cls] = grid[ties[np.argmin(np.abs(grid[ties]))]]
                changed = True
            scores[:, cls] = log_probs[:, cls] + biases[cls]
        if not changed:
            break
    return biases


def apply_biases(probs: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """Probabilities whose argmax is the biased decision: softmax(log p + b)."""
    return softmax(safe_log(probs) + biases)


# ----------------------------------------------------------------------------- stacking

def stack_features(member_probs: np.ndarray) -> np.ndarray:
    """(K, N, C) -> (N, K*C) log-probabilities: the inputs of the stacker."""
    k, n, c = member_probs.shape
    return np.log(np.clip(member_probs, 1e-7, 1.0)).transpose(1, 0, 2).reshape(n, k * c)


def _full_proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """predict_proba padded to all classes (a training subset can miss a rare class)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return clip_probs(out)


def _stacker():
    from sklearn.linear_model import LogisticRegression
    return LogisticRegression(C=1.0, max_iter=1000)


def fit_stacker(member_probs: np.ndarray, y: np.ndarray, fold: np.ndarray, inner_cv: bool = True,
                sample_weight=None):
    """LogisticRegression on the members' OOF log-probs.

    Returns (model fitted on all rows, its OOF probabilities from cross_val_predict over `fold`). The
    OOF probabilities are what later fitted steps (calibration, biases) must be tuned on: in-sample
    stacker outputs are over-confident.
    """
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from threadpoolctl import threadpool_limits

    c = member_probs.shape[2]
    x = stack_features(member_probs)
    # lbfgs makes many small BLAS calls: extra BLAS threads only contend (50x slower on a busy 2-core box)
    with threadpool_limits(limits=1, user_api="blas"):
        model = _stacker().fit(x, y, sample_weight=sample_weight)
        if not inner_cv or len(np.unique(fold)) < 2:
            return model, _full_proba(model, x, c)
        inner = cross_val_predict(_stacker(), x, y, cv=PredefinedSplit(fold), method="predict_proba",
                                  params=None if sample_weight is None else {"sample_weight": sample_weight})
    padded = np.zeros((len(x), c))
    padded[:, np.unique(y)] = inner
    return model, clip_probs(padded)


def stack_predict(model, member_probs: np.ndarray) -> np.ndarray:
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        return _full_proba(model, stack_features(member_probs), member_probs.shape[2])


def stacker_member_shares(model, k: int) -> np.ndarray:
    """Each member's share of the stacker's |coefficients|: a readable stand-in for a weight."""
    coef = np.abs(model.coef_).reshape(model.coef_.shape[0], k, -1).sum(axis=(0, 2))
    return coef / coef.sum() if coef.sum() > 0 else np.full(k, 1.0 / k)


def stacker_to_json(model) -> dict:
    """The fitted stacker as JSON types: its classes, coefficients and intercepts (all predict_proba reads)."""
    return {"classes": [int(c) for c in model.classes_], "coef": model.coef_.tolist(),
            "intercept": model.intercept_.tolist()}


def stacker_from_json(data: dict):
    """The stacker `stacker_to_json` wrote, predicting exactly as the fitted one did."""
    model = _stacker()
    model.classes_ = np.asarray(data["classes"], dtype=np.int64)
    model.coef_ = np.asarray(data["coef"], dtype=np.float64)
    model.intercept_ = np.asarray(data["intercept"], dtype=np.float64)
    if model.coef_.ndim != 2 or model.intercept_.shape != model.coef_.shape[:1]:
        raise ValueError(f"stacker coefficients of shape {model.coef_.shape} with {model.intercept_.shape} intercepts")
    model.n_features_in_ = model.coef_.shape[1]
    return model
