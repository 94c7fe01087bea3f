"""Heads on L2-normalised features, fitted with scikit-learn and kept as plain arrays (never pickles).

Every head is, once fitted, a small torch module from features to logits: `LinearHead` (logistic
regression, or a linear SVM whose decision function is temperature-calibrated) and `KnnHead` (cosine
k-nearest neighbours, similarity-weighted votes). `head_arrays` / `head_from_arrays` turn one into the
arrays of `head.npz` and back, so a fold's predictions at training time and `foldblend predict` later
run the very same code on the very same numbers. `fit_heads` also gives a linear head's test head: the
same fit, standardised by the test features' own statistics.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn

from foldblend.config import EmbedConfig
from foldblend.members.infer import PRIOR_IMAGES, shrunk
from foldblend.members.transforms import class_sample_weights

EPS = 1e-6  # kNN: the probability floor of a class no neighbour voted for (log(1e-6) = -13.8)


class LinearHead(nn.Module):
    """logits = features @ weight.T + bias (a standardisation folded in)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(np.asarray(weight, np.float32)))
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias, np.float32)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.weight.T + self.bias


class KnnHead(nn.Module):
    """Cosine kNN: the k most similar training images vote, each with weight exp(similarity / temperature)
    times its class weight; logits are the log of the normalised votes (floored at EPS)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, class_weights: np.ndarray, k: int,
                 temperature: float):
        super().__init__()
        # stored as float16 (half the size of a fold's head.npz); computed in float32 from those values
        self.register_buffer("features", torch.as_tensor(np.asarray(features, np.float16)))
        self.register_buffer("labels", torch.as_tensor(np.asarray(labels, np.int64)))
        self.register_buffer("class_weights", torch.as_tensor(np.asarray(class_weights, np.float32)))
        self.k, self.temperature = int(min(k, len(labels))), float(temperature)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        sims = feats.float() @ self.features.float().T
        top, idx = sims.topk(self.k, dim=1)
        # exp((s - 1) / T): the constant exp(-1/T) cancels in the normalisation and keeps exp() finite
        votes = torch.exp((top - 1.0) / self.temperature) * self.class_weights[self.labels[idx]]
        scores = torch.zeros(len(feats), len(self.class_weights), device=feats.device)
        scores.scatter_add_(1, self.labels[idx], votes)
        return torch.log(scores / scores.sum(1, keepdim=True).clamp_min(1e-30) + EPS)


def _class_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    if mode == "none":
        return np.ones(n_classes, np.float32)
    return class_sample_weights(labels, n_classes, mode).astype(np.float32)




def _folded(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A linear map on standardised features as one on raw features: W' = W / s, b' = b - W' @ mu."""
    w = weight / scale
    return w.astype(np.float32), (bias - w @ mean).astype(np.float32)


def standardisation_of_test(mean: np.ndarray, var: np.ndarray, test_feats: np.ndarray,
                         prior: int = PRIOR_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) that standardise the test's features by their own statistics, shrunk towards the
    training features' (`mean`, `var`) as if those were `prior` more test images: with m test images the
    test's own statistics weigh m / (m + prior); with none, the training ones are returned."""
    m = len(test_feats)
    if m == 0:
        return mean, np.sqrt(var)
    t = np.asarray(test_feats, np.float64)
    mu = shrunk(t.mean(axis=0), mean, m, prior)
    scale = np.sqrt(shrunk(t.var(axis=0), var, m, prior))
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0  # a constant feature: left unscaled, as StandardScaler does
    return mu, scale


def fit_head(cfg: EmbedConfig, feats: np.ndarray, labels: np.ndarray, n_classes: int, class_weight: str = "none",
             seed: int = 0) -> nn.Module:
    """Fit `cfg.head` on (n, D) L2-normalised features; every class index 0..C-1 gets a logit, also one
    absent from `labels`."""
    return fit_heads(cfg, feats, labels, n_classes, class_weight, seed)[0]


def fit_heads(cfg: EmbedConfig, feats: np.ndarray, labels: np.ndarray, n_classes: int, class_weight: str = "none",
              seed: int = 0, test_feats: np.ndarray | None = None) -> tuple[nn.Module, nn.Module]:
    """(the head for images like the training ones, the head for the test images `test_feats`).

    A linear head reads standardised features. Given the test's features, its test head standardises them
    by the test's own mean and spread (`standardisation_of_test`) instead of the training features': a
    resolution, source or style shift moves the backbone's features as a whole, and a head fitted on the
    training features' scale reads the test through statistics that no longer hold. That is the statistics
    half of AdaBN (Li et al., 2016) / CORAL (Sun et al., 2016) for a frozen backbone: no label, one pass.
    Measured on bench/shift_blend.py's twelve projects (the members' test macro-F1, logistic regression
    and linear SVM): +0.12 to +0.30 with the test at a fifth of the resolution, 0 to +0.04 with unseen
    concepts or styles, -0.015 to +0.03 with no shift (forced on: `test_stats: auto` leaves a test drawn
    like train alone). kNN compares images by angle: one head."""
    from sklearn.preprocessing import StandardScaler

    cw = _class_weights(labels, n_classes, class_weight)
    if cfg.head == "knn":
        head = KnnHead(feats, labels, cw, cfg.k, cfg.temperature)
        return head, head
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"an embedding head needs at least two classes in its training folds, got {len(present)}")
    scaler = StandardScaler().fit(feats)
    x = scaler.transform(feats)
    sk_weights = None if class_weight == "none" else {int(c): float(cw[c]) for c in present}
    if cfg.head == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=cfg.C, max_iter=2000, class_weight=sk_weights).fit(x, labels)
        weight, bias = clf.coef_, clf.intercept_
        if len(present) == 2:  # one row for class 1: logits (0, z) give the same softmax as the binary model
            weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    else:  # linear_svc: the SVM's decision function times a temperature fitted on held-out decisions
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import LinearSVC

        min_count = int(np.bincount(labels)[present].min())
        svc = LinearSVC(C=cfg.C, class_weight=sk_weights, random_state=seed, max_iter=5000)
        if min_count >= 2:
            clf = CalibratedClassifierCV(svc, method="temperature", cv=min(3, min_count), ensemble=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # LinearSVC's ConvergenceWarning on separable folds
                clf.fit(x, labels)
            fitted = clf.calibrated_classifiers_[0]
            svm, beta = fitted.estimator, float(fitted.calibrators[0].beta_)
        else:  # a class with one image: no held-out decisions to calibrate on
            svm, beta = svc.fit(x, labels), 1.0
        weight, bias = svm.coef_ * beta, svm.intercept_ * beta
        if len(present) == 2:  # sklearn's binary decision d becomes logits (-d, d)
            weight, bias = np.vstack([-weight, weight]), np.concatenate([-bias, bias])
    weight, bias = np.asarray(weight, np.float64), np.asarray(bias, np.float64)

    def linear(mean: np.ndarray, scale: np.ndarray) -> LinearHead:
        w, b = _folded(weight, bias, mean, scale)
        full_w = np.zeros((n_classes, w.shape[1]), np.float32)
        full_b = np.full(n_classes, np.log(EPS) * 3, np.float32)  # a class never seen in training: never predicted
        full_w[present], full_b[present] = w, b
        return LinearHead(full_w, full_b)

    head = linear(scaler.mean_, scaler.scale_)
    if test_feats is None or len(test_feats) == 0:
        return head, head
    return head, linear(*standardisation_of_test(scaler.mean_, scaler.var_, test_feats))


@torch.no_grad()
def head_logits(head: nn.Module, feats: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(n, C) float32 logits of (n, D) features, `chunk` rows at a time (kNN similarities stay small)."""
    out = [head(torch.from_numpy(np.array(feats[i:i + chunk], np.float32))).numpy()  # a writable copy
           for i in range(0, len(feats), chunk)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, head_classes(head)), np.float32)


def head_classes(head: nn.Module) -> int:
    return len(head.bias) if isinstance(head, LinearHead) else len(head.class_weights)


def head_arrays(head: nn.Module) -> dict[str, np.ndarray]:
    """The arrays that rebuild `head` (see `head_from_arrays`)."""
    if isinstance(head, LinearHead):
        return {"head": np.asarray("linear"), "weight": head.weight.numpy(), "bias": head.bias.numpy()}
    return {"head": np.asarray("knn"), "features": head.features.numpy(), "labels": head.labels.numpy(),
            "class_weights": head.class_weights.numpy(), "k": np.asarray(head.k),
            "temperature": np.asarray(head.temperature)}


def head_from_arrays(z) -> nn.Module:
    kind = str(z["head"])
    if kind == "linear":
        return LinearHead(z["weight"], z["bias"])
    if kind == "knn":
        return KnnHead(z["features"], z["labels"], z["class_weights"], int(z["k"]), float(z["temperature"]))
    raise ValueError(f"unknown embedding head {kind!r}")
