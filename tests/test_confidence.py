"""The confidence estimate (ATC): the test score predicted from the fold models' confidence on the test,
on constructed cases whose true test score is known, and through the blend's fold pipelines."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_blend import CLASSES, member

from foldblend.artifacts import save_member
from foldblend.ensemble.confidence import (
    confidence_score,
    counted_correct,
    describe,
    describe_estimates,
    fold_estimate,
    member_note,
)
from foldblend.ensemble.pipeline import BlendOptions, apply_blend, blend_arrays, fit_blend
from foldblend.metrics import macro_f1, softmax
from foldblend.stages.blend import run_blend

N_CLASSES = 3


def predictions(n: int, accuracy: float, rng: np.random.Generator, y: np.ndarray | None = None):
    """(labels, probabilities) of a model right on `accuracy` of the images, whose confidence ranks every
    right answer above every wrong one (0.7-0.98 against 0.4-0.65), in training and test alike: the
    case in which thresholded confidence counts the right answers exactly."""
    y = rng.integers(0, N_CLASSES, n) if y is None else y
    right = rng.random(n) < accuracy
    conf = np.where(right, rng.uniform(0.7, 0.98, n), rng.uniform(0.4, 0.65, n))
    pred = np.where(right, y, (y + rng.integers(1, N_CLASSES, n)) % N_CLASSES)
    probs = np.repeat(((1 - conf) / (N_CLASSES - 1))[:, None], N_CLASSES, axis=1)
    probs[np.arange(n), pred] = conf
    return y, probs


def run(oof_accuracy: float, test_accuracy: float, seed: int, n_folds: int = 5, n_oof: int = 3000, n_test: int = 3000):
    """(OOF labels, OOF probs, folds, fold-model test probs (F, M, C), the fold models' true test macro-F1)."""
    rng = np.random.default_rng(seed)
    y, probs = predictions(n_oof, oof_accuracy, rng)
    fold = np.arange(n_oof) % n_folds
    test_y = rng.integers(0, N_CLASSES, n_test)
    test = np.stack([predictions(n_test, test_accuracy, rng, test_y)[1] for _ in range(n_folds)])
    truth = float(np.mean([macro_f1(test_y, t.argmax(1), N_CLASSES) for t in test]))
    return y, probs, fold, test, truth


def test_the_estimate_follows_a_test_the_models_are_less_sure_of():
    y, probs, fold, test, truth = run(oof_accuracy=0.9, test_accuracy=0.6, seed=0)
    cv = macro_f1(y, probs.argmax(1), N_CLASSES)
    result = confidence_score(y, probs, fold, test, groups=np.arange(len(y)) // 3, n_boot=50)
    assert cv - truth > 0.2                          # plain CV is far too optimistic
    assert abs(result["macro_f1"] - truth) < 0.03    # the confidence estimate is not
    assert 0.002 < result["std"] < 0.03 and result["n_bootstrap"] == 50 and result["n_folds"] == 5
    assert (abs(result["accuracy"] - 0.6) < 0.03
            and describe(result).startswith(f"confidence estimate {result['macro_f1']:.4f} ± "))


def test_no_shift_leaves_cv_alone():
    y, probs, fold, test, truth = run(oof_accuracy=0.75, test_accuracy=0.75, seed=1)
    cv = macro_f1(y, probs.argmax(1), N_CLASSES)
    result = confidence_score(y, probs, fold, test, n_boot=20)
    assert abs(result["macro_f1"] - cv) < 0.02 and abs(result["macro_f1"] - truth) < 0.02


def test_a_perfect_model_on_a_test_it_is_sure_of_scores_one():
    y = np.arange(30) % N_CLASSES
    probs = np.eye(N_CLASSES)[y] * 0.9 + 0.1 / N_CLASSES
    f1, acc = fold_estimate(y, probs, probs[:12].max(1), probs[:12].argmax(1), N_CLASSES)
    assert (f1, acc) == (1.0, 1.0)
    unsure = np.full(12, 1 / N_CLASSES)  # sure of nothing
    f1, acc = fold_estimate(y, probs, unsure, np.zeros(12, np.int64), N_CLASSES)
    assert (f1, acc) == (0.0, 0.0)


@pytest.mark.parametrize("n_right", [0, 3, 5, 10])
def test_tied_confidences_count_the_oof_rows_exactly_right(n_right):
    oof = np.repeat([0.5, 0.7, 0.9], [4, 3, 3])      # ties, as a model with few distinct outputs gives
    counted = counted_correct(oof, n_right, oof)
    assert counted.sum() == pytest.approx(n_right) and counted.min() >= 0 and counted.max() <= 1
    assert np.all(np.diff(counted) >= 0)            # more confident never counts less
    below, above = counted_correct(oof, n_right, np.array([0.1, 0.99]))
    assert below == 0.0 and above == (1.0 if n_right > 0 else 0.0)


@pytest.mark.parametrize("n", [5, 10, 49, 100, 199])
def test_the_threshold_sits_between_the_last_wrong_and_the_first_right_row(n):
    oof = np.arange(n, dtype=np.float64)  # distinct confidences; the lowest n_wrong rows are below the threshold
    for n_wrong in range(n + 1):
        between = np.arange(n + 1) - 0.5  # a test confidence in every gap, below the first and above the last
        counted = counted_correct(oof, n - n_wrong, between)
        np.testing.assert_array_equal(counted, (np.arange(n + 1) > n_wrong).astype(float))


def test_fold_pipelines_must_match_the_folds():
    y, probs, fold, test, _ = run(0.8, 0.8, seed=2, n_oof=60, n_test=10)
    with pytest.raises(ValueError, match="5 folds but test predictions from 4"):
        confidence_score(y, probs, fold, test[:4])


def _fold_member(name, y, fold, oof_probs, fold_test_probs, views=("identity",)):
    """A member whose i-th fold model predicted `fold_test_probs[i]` on the test."""
    m = member(name, oof_probs, y, fold=fold, views=views)
    m.test_ids = np.array([f"t{i}" for i in range(fold_test_probs.shape[1])])
    m.test_logits = np.log(np.clip(np.broadcast_to(fold_test_probs[:, None], (len(fold_test_probs), len(views))
                                                   + fold_test_probs.shape[1:]), 1e-12, 1)).astype(np.float32)
    m.holdout_logits = np.zeros((len(fold_test_probs), len(views), 0, len(CLASSES)), np.float32)
    return m


def test_each_fold_pipeline_predicts_the_test_with_its_own_fold_models():
    rng = np.random.default_rng(3)
    y = np.arange(90) % len(CLASSES)
    fold = np.arange(90) % 3
    oof = [softmax(rng.normal(0, 1, (90, len(CLASSES))) + 2 * np.eye(len(CLASSES))[y] * s) for s in (1.0, 0.2)]
    tests = [softmax(rng.normal(0, 1, (3, 20, len(CLASSES)))) for _ in range(2)]
    members = [_fold_member("a", y, fold, oof[0], tests[0]), _fold_member("b", y, fold, oof[1], tests[1])]
    plain = blend_arrays(members, method="mean")
    np.testing.assert_allclose(plain.fold_test_probs, (tests[0] + tests[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(plain.fold_test_probs.mean(0), plain.test_probs, atol=1e-5)
    # a fitted blend: fold k's test is predicted by the pipeline fitted without fold k, as its OOF rows were
    fitted = blend_arrays(members, method="greedy", rounds=5, temperature=True)
    opts = BlendOptions(method="greedy", rounds=5, temperature=True)
    views = [v[None] for v in oof]
    for k in range(3):
        model = fit_blend([v[:, fold != k] for v in views], y[fold != k], fold[fold != k], opts)
        np.testing.assert_allclose(fitted.fold_test_probs[k], apply_blend(model, [t[k][None] for t in tests]),
                                   atol=1e-5)
        np.testing.assert_allclose(fitted.oof_probs[fold == k], apply_blend(model, [v[:, fold == k] for v in views]),
                                   atol=1e-6)
    # no one-to-one fold models (the helper's members have 2 for 3 folds), or ranks: no per-fold test, and why
    odd = blend_arrays([member("c", oof[0], y, fold=fold)])
    assert odd.fold_test_probs is None and "c: test predictions from 2 fold models for 3 folds" in odd.no_confidence
    ranked = blend_arrays(members, method="rank")
    assert ranked.fold_test_probs is None and "rank" in ranked.no_confidence


def test_run_blend_saves_and_prints_the_estimate(tmp_path, capsys):
    y, probs, fold, test, truth = run(0.9, 0.6, seed=4, n_folds=3, n_oof=300, n_test=200)
    classes = ["a", "b", "c"]
    save_member(tmp_path / "oof" / "m", classes=classes, ids=[f"i{i}" for i in range(len(y))], labels=y, fold=fold,
                views=["identity"], oof_logits=np.log(probs)[None], test_ids=[f"t{i}" for i in range(200)],
                test_logits=np.log(test)[:, None], scores={})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend")
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "oof" / "_blend" / "blend.json").read_text())["confidence"]
    assert saved == result.confidence and abs(saved["macro_f1"] - truth) < 0.05
    assert f"nested CV {result.cv_nested['macro_f1']:.4f} · confidence estimate {saved['macro_f1']:.4f} ± " in out
    assert describe_estimates(None, None) == ""


def test_each_member_alone_gets_its_own_estimate(tmp_path, capsys):
    """Two members: `steady` is as good on the test as on OOF, `fragile` better on OOF and far worse on
    the test. Each one's estimate follows its own test score, and blend.json keeps them."""
    rng = np.random.default_rng(5)
    n, m, n_folds = 600, 400, 3
    y = rng.integers(0, N_CLASSES, n)
    fold = np.arange(n) % n_folds
    test_y = rng.integers(0, N_CLASSES, m)
    truth = {}
    for name, oof_acc, test_acc in (("steady", 0.7, 0.7), ("fragile", 0.97, 0.3)):
        _, probs = predictions(n, oof_acc, rng, y)
        test = np.stack([predictions(m, test_acc, rng, test_y)[1] for _ in range(n_folds)])
        truth[name] = np.mean([macro_f1(test_y, t.argmax(1), N_CLASSES) for t in test])
        save_member(tmp_path / "oof" / name, classes=["a", "b", "c"], ids=[f"i{i}" for i in range(n)], labels=y,
                    fold=fold, views=["identity"], oof_logits=np.log(probs)[None],
                    test_ids=[f"t{i}" for i in range(m)], test_logits=np.log(test)[:, None], scores={})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend", select="blend")
    out = capsys.readouterr().out
    alone = result.member_confidence
    for name in truth:
        assert abs(alone[name]["macro_f1"] - truth[name]) < 0.04 and alone[name]["std"] > 0
    assert f"fragile              CV {result.selection['candidates']['fragile']['cv']:.4f} · atc " \
           f"{alone['fragile']['macro_f1']:.4f}" in out
    saved = json.loads((tmp_path / "oof" / "_blend" / "blend.json").read_text())
    assert saved["member_confidence"] == alone and saved["selection"]["chosen"] == "blend"


def test_a_member_estimated_above_the_blend_beyond_its_noise_is_named():
    blend = {"macro_f1": 0.80}
    assert member_note(blend, {"x": {"macro_f1": 0.81, "std": 0.005}}) is None   # within the 0.02 margin
    assert member_note(blend, {"x": {"macro_f1": 0.85, "std": 0.03}}) is None    # within two of its spreads
    note = member_note(blend, {"x": {"macro_f1": 0.85, "std": 0.01}, "y": {"macro_f1": 0.9, "std": 0.01}})
    assert note.startswith("note: y alone has a higher confidence estimate on the test than the blend "
                           "(0.9000 vs 0.8000)")
    assert "foldblend submit --exp y" in note and member_note(None, {"x": {"macro_f1": 1.0}}) is None
