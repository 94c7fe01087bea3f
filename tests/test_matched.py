"""The test-matched CV estimate on constructed cases whose true test score is known."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from foldblend.ensemble.matched import bin_edges, describe, importance_weights, matched_score
from foldblend.metrics import macro_f1

NEAR, FAR = (0.85, 0.95), (0.5, 0.7)      # similarity to the nearest training image
ACCURACY = {"near": 0.95, "far": 0.6}     # a model is right more often on images with a close relative


def rows(n: int, near_share: float, rng: np.random.Generator):
    """(labels, probabilities, similarity) of n images: correct with the accuracy of their regime."""
    near = rng.random(n) < near_share
    sim = np.where(near, rng.uniform(*NEAR, n), rng.uniform(*FAR, n))
    y = rng.integers(0, 3, n)
    right = rng.random(n) < np.where(near, ACCURACY["near"], ACCURACY["far"])
    pred = np.where(right, y, (y + rng.integers(1, 3, n)) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), pred] = 0.8
    return y, probs, sim


def test_weights_reproduce_the_test_distribution_over_bins():
    rng = np.random.default_rng(0)
    oof, test = rng.uniform(0, 1, 2000), rng.uniform(0.5, 1, 500)
    edges = bin_edges(test)
    weights, coverage = importance_weights(oof, test, edges)
    assert coverage == 1.0 and np.isclose(weights.mean(), 1.0)
    assert weights[oof < test.min()].max() == 0  # below every test image: not like the test at all
    # weighted bin shares equal the test's
    inside = oof >= test.min()
    ob = np.clip(np.searchsorted(edges, oof[inside], side="right") - 1, 0, len(edges) - 2)
    tb = np.clip(np.searchsorted(edges, test, side="right") - 1, 0, len(edges) - 2)
    weighted = np.bincount(ob, weights=weights[inside], minlength=len(edges) - 1) / weights.sum()
    np.testing.assert_allclose(weighted, np.bincount(tb, minlength=len(edges) - 1) / len(test), atol=1e-9)


def test_the_estimate_moves_to_the_true_test_score():
    rng = np.random.default_rng(1)
    y, probs, oof_sim = rows(4000, near_share=0.8, rng=rng)       # CV: most images have a close relative
    test_y, test_probs, test_sim = rows(50_000, near_share=0.2, rng=rng)  # the test: most do not
    truth = f1_score(test_y, test_probs.argmax(1), average="macro")
    groups = np.arange(len(y)) // 4
    result = matched_score(y, probs, oof_sim, test_sim[:600], groups, n_classes=3, n_boot=100)
    plain = result["unweighted_macro_f1"]
    assert plain - truth > 0.2                              # plain CV is far too optimistic
    assert abs(result["macro_f1"] - truth) < 0.03           # the matched estimate is not
    assert 0.003 < result["std"] < 0.05
    assert abs(result["macro_f1"] - truth) < 2.5 * result["std"] + 0.01
    assert not result["fragile"] and result["coverage"] == 1.0
    assert describe(result).startswith(f"test-matched {result['macro_f1']:.4f} ± ")


def test_no_shift_leaves_cv_alone():
    rng = np.random.default_rng(2)
    y, probs, oof_sim = rows(3000, 0.5, rng)
    _, _, test_sim = rows(800, 0.5, rng)
    result = matched_score(y, probs, oof_sim, test_sim, np.arange(len(y)), n_classes=3, n_boot=50)
    assert abs(result["macro_f1"] - result["unweighted_macro_f1"]) < 0.02
    assert result["ess"] > 0.9 * len(y)


def test_test_images_unlike_any_oof_image_make_it_fragile():
    rng = np.random.default_rng(3)
    y, probs, _ = rows(1000, 0.5, rng)
    oof_sim = rng.uniform(0.8, 1.0, 1000)
    test_sim = np.r_[rng.uniform(0.8, 1.0, 200), rng.uniform(0.1, 0.3, 200)]  # half far below every OOF image
    result = matched_score(y, probs, oof_sim, test_sim, np.arange(1000), n_classes=3, n_boot=20)
    assert result["coverage"] < 0.9 and result["fragile"]
    assert "fragile" in describe(result)


def test_sample_weighted_macro_f1_is_sklearns():
    rng = np.random.default_rng(4)
    y, pred, w = rng.integers(0, 5, 300), rng.integers(0, 5, 300), rng.uniform(0, 3, 300)
    w[:40] = 0
    for n_classes in (5, 7):  # 7: two classes nobody has, which count as 0 (zero_division=0)
        expected = f1_score(y, pred, labels=list(range(n_classes)), average="macro", sample_weight=w, zero_division=0)
        assert macro_f1(y, pred, n_classes, sample_weight=w) == pytest.approx(expected, abs=1e-12)
