import numpy as np
import pytest
from sklearn.metrics import f1_score, log_loss

from foldblend.metrics import METRICS, classification_scores, log_softmax, macro_f1, score, softmax, weighted_f1


def test_softmax_is_stable_and_normalised():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]])
    probs = softmax(logits)
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-12)
    np.testing.assert_allclose(log_softmax(logits)[1], np.log([0.2, 0.6, 0.2]))
    assert np.isfinite(log_softmax(logits)).all()  # log(softmax) would be -inf for the -1000 entry


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("name,average", [("macro_f1", "macro"), ("micro_f1", "micro"),
                                          ("weighted_f1", "weighted")])
def test_fast_f1_equals_sklearn(seed, name, average):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 9))
    # draw from fewer classes than exist, so some classes are absent from truth and/or predictions
    y_true = rng.integers(0, n_classes - 1, size=int(rng.integers(1, 60)))
    y_pred = rng.integers(1, n_classes, size=len(y_true))
    expected = f1_score(y_true, y_pred, labels=list(range(n_classes)), average=average, zero_division=0)
    assert METRICS[name](y_true, y_pred, n_classes) == pytest.approx(expected, abs=1e-12)


def test_batched_metric_equals_one_at_a_time():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    candidates = rng.integers(0, 5, (7, 200))
    for fn in (macro_f1, weighted_f1, METRICS["accuracy"]):
        batched = fn(y_true, candidates, 5)
        assert batched.shape == (7,)
        np.testing.assert_allclose(batched, [fn(y_true, c, 5) for c in candidates])


def test_classification_scores_hand_case():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])  # one class-1 row missed
    s = classification_scores(y, probs, 2)
    # class 0: tp=2, fp=1, fn=0 -> F1 = 4/5; class 1: tp=1, fp=0, fn=1 -> F1 = 2/3
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert s["accuracy"] == pytest.approx(0.75) == s["micro_f1"]
    assert s["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.3, 0.8])))
    assert set(s) == {"macro_f1", "accuracy", "log_loss", "micro_f1", "weighted_f1"}


def test_score_log_loss_matches_sklearn_and_survives_zero_probability():
    y = np.array([0, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    assert score(y, probs, "log_loss", 3) == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]))
    assert np.isfinite(score(y, np.eye(3)[[1, 0, 0]], "log_loss", 3))
    with pytest.raises(ValueError, match="unknown metric"):
        score(y, probs, "auc", 3)
