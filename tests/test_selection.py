"""Under shift: importance-weighted fitting, the label-free estimators, the candidate the blend writes and
the expected score of the written file, on constructed members whose test scores are known."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_confidence import N_CLASSES, predictions

from foldblend.artifacts import load_member, save_member
from foldblend.ensemble import estimators as S
from foldblend.ensemble import methods as E
from foldblend.ensemble.fitted import BlendOptions, FittedBlend
from foldblend.ensemble.importance import CLIP, importance_weights
from foldblend.ensemble.pipeline import apply_blend, member_views
from foldblend.metrics import log_softmax, macro_f1
from foldblend.stages.blend import run_blend

CLASSES3 = ["a", "b", "c"]


# ----------------------------------------------------------------------------- weighted fitting

def _weighted_case(seed=0, n=300, c=4, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, c)) + 1.5 * np.eye(c)[y][None]
    probs = np.exp(log_softmax(logits))
    w = rng.integers(1, 4, n)
    return y, probs, w


def test_integer_importance_weights_fit_as_repeated_rows():
    """A row of weight 3 counts as three copies of it: every fitted step, weighted, equals the same step on
    the rows repeated (decision metrics exactly, smooth losses to optimiser precision)."""
    y, probs, w = _weighted_case()
    rep = np.repeat(np.arange(len(y)), w)
    for metric in ("macro_f1", "accuracy", "weighted_f1"):
        assert np.array_equal(E.greedy_select(probs, y, metric, rounds=20, sample_weight=w),
                              E.greedy_select(probs[:, rep], y[rep], metric, rounds=20))
        assert np.array_equal(E.tune_biases(np.log(probs[0]), y, metric, sample_weight=w),
                              E.tune_biases(np.log(probs[0][rep]), y[rep], metric))
    views = probs[:2]
    assert E.fit_identity_weight(views, y, sample_weight=w) == E.fit_identity_weight(views[:, rep], y[rep])
    assert E.fit_temperature(np.log(probs[0]), y, w) == pytest.approx(E.fit_temperature(np.log(probs[0][rep]), y[rep]),
                                                                       rel=1e-3)
    assert np.allclose(E.fit_scipy_weights(probs, y, w), E.fit_scipy_weights(probs[:, rep], y[rep]), atol=2e-3)
    fold = np.arange(len(y)) % 3
    weighted = E.fit_stacker(probs, y, fold, inner_cv=False, sample_weight=w)[0]
    repeated = E.fit_stacker(probs[:, rep], y[rep], fold[rep], inner_cv=False)[0]
    assert np.allclose(weighted.coef_, repeated.coef_, atol=1e-3)


def test_weights_change_what_is_fitted():
    """Weights that count only the rows where member 1 is right make greedy selection pick member 1."""
    rng = np.random.default_rng(1)
    n, c = 400, 3
    y = rng.integers(0, c, n)
    good_first = np.arange(n) < 300           # member 0 right on these, member 1 on the rest
    right0, right1 = good_first, ~good_first
    probs = np.stack([np.where(r[:, None], np.eye(c)[y] * 0.8 + 0.2 / c, np.eye(c)[(y + 1) % c] * 0.8 + 0.2 / c)
                      for r in (right0, right1)])
    assert E.greedy_select(probs, y, "macro_f1", rounds=10).argmax() == 0
    w = np.where(good_first, 0.05, 1.0)
    assert E.greedy_select(probs, y, "macro_f1", rounds=10, sample_weight=w).argmax() == 1


# ----------------------------------------------------------------------------- importance weights

def test_importance_weights_favour_the_oof_rows_that_look_like_the_test():
    """OOF rows: 80% confidently predicted, 20% unsure; the test: unsure only. The unsure rows get the weight;
    the weights have mean 1, none above the clip, and the effective sample size says how few rows remain."""
    rng = np.random.default_rng(2)
    n, m, c, folds = 1000, 600, 4, 3
    unsure = rng.random(n) < 0.2

    def probs(rows_unsure):
        sharp = np.where(rows_unsure[:, None], 0.6, 4.0)
        logits = rng.normal(size=(len(rows_unsure), c)) * 0.3 + sharp * np.eye(c)[rng.integers(0, c, len(rows_unsure))]
        return np.exp(log_softmax(logits))

    oof_views = [probs(unsure)[None], probs(unsure)[None]]
    tests = [[probs(np.ones(m, bool))[None], probs(np.ones(m, bool))[None]] for _ in range(folds)]
    info = importance_weights(oof_views, np.arange(n) % folds, lambda i: tests[i])
    w = info["weights"]
    assert w.mean() == pytest.approx(1.0) and w.max() <= CLIP + 1e-9
    assert w[unsure].mean() > 3 * w[~unsure].mean()
    assert info["auc"] > 0.7 and info["ess"] < 0.8 * n
    assert importance_weights(oof_views, np.arange(n) % folds, None)["weights"] is None


# ----------------------------------------------------------------------------- estimators

def test_expected_f1_under_the_true_labels_is_the_macro_f1():
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 5, 500), rng.integers(0, 5, 500)
    assert S.expected_f1(pred, np.eye(5)[y]) == pytest.approx(macro_f1(y, pred, 5))


@pytest.mark.parametrize("name", [e for e in S.ESTIMATORS if e != "aol"])
def test_each_estimator_follows_a_drop_in_test_accuracy(name):
    """Fold models right on 90% of OOF rows and 60% of test images, sure when right and unsure when wrong
    (in both): every estimator that reads one model (`aol` reads several: below) puts the test below the
    OOF score; ATC, which counts confidences above a threshold, lands on the truth (the others move with
    the mean confidence, which falls by a third of the accuracy here: the case that separates them)."""
    rng = np.random.default_rng(4)
    n, m, folds = 1500, 900, 3
    y, oof = predictions(n, 0.9, rng)
    test_y = rng.integers(0, N_CLASSES, m)
    fold_test = np.stack([predictions(m, 0.6, rng, test_y)[1] for _ in range(folds)])
    truth = np.mean([macro_f1(test_y, t.argmax(1), N_CLASSES) for t in fold_test])
    parts = S.FoldParts(y, oof, np.arange(n) % folds, fold_test, estimators=(name,))
    oof_f1 = macro_f1(y, oof.argmax(1), N_CLASSES)
    assert oof_f1 - parts.estimate(name) > 0.05
    assert name != "atc" or abs(parts.estimate(name) - truth) < 0.03


def test_the_fold_average_gain_is_zero_for_identical_folds_and_positive_for_disagreeing_ones():
    rng = np.random.default_rng(5)
    m, c = 800, 4
    base = rng.normal(size=(m, c))
    same = np.stack([np.exp(log_softmax(base))] * 3)
    assert S.fold_average_gain(same, same.mean(0)) == pytest.approx(0.0)
    noisy = np.stack([np.exp(log_softmax(base + rng.normal(scale=1.5, size=(m, c)))) for _ in range(5)])
    assert S.fold_average_gain(noisy, noisy.mean(0)) > 0.02


# ----------------------------------------------------------------------------- the written candidate

def _members(tmp_path, specs, seed=5, n=900, m=600, n_folds=3):
    """Members named by `specs` {name: (oof accuracy, test accuracy)}, their fold models' test predictions
    alike up to a little noise; returns the test labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    test_y = rng.integers(0, N_CLASSES, m)
    for name, (oof_acc, test_acc) in specs.items():
        _, probs = predictions(n, oof_acc, rng, y)
        base = np.log(predictions(m, test_acc, rng, test_y)[1])  # fold models err together, as trained ones do
        test = np.stack([np.exp(log_softmax(base + rng.normal(scale=0.05, size=base.shape))) for _ in range(n_folds)])
        save_member(tmp_path / "oof" / name, classes=CLASSES3, ids=[f"i{i}" for i in range(n)], labels=y,
                    fold=np.arange(n) % n_folds, views=["identity"], oof_logits=np.log(probs)[None],
                    test_ids=[f"t{i}" for i in range(m)], test_logits=np.log(test)[:, None], scores={})
    return test_y


def test_a_candidate_estimated_above_the_fitted_blend_beyond_the_noise_is_written(tmp_path, capsys):
    """`fragile` is far better on OOF and far worse on the test: greedy weights follow it, the estimates see
    through it, and the blend writes the candidate estimated best (here the plain mean, truly the best on
    the test) -- in blend.npz, and in the pipeline predict applies."""
    test_y = _members(tmp_path, {"steady": (0.75, 0.75), "fragile": (0.97, 0.3)})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend", method="greedy", bias=True)
    out = capsys.readouterr().out
    sel = result.selection
    truth = {name: macro_f1(test_y, p.argmax(1), N_CLASSES) for name, p in sel["candidate_test_probs"].items()}
    written = macro_f1(test_y, result.test_probs.argmax(1), N_CLASSES)
    assert sel["chosen"] != "blend" and written == truth[sel["chosen"]] >= max(truth.values()) - 0.01
    assert truth["blend"] < written and truth["fragile"] < 0.4
    assert f"note: wrote {'the plain mean of the members' if sel['chosen'] == 'mean' else sel['chosen'] + ' alone'} " \
           f"instead of the fitted blend: estimated" in out
    saved = json.loads((tmp_path / "oof" / "_blend" / "blend.json").read_text())
    assert saved["selection"]["chosen"] == sel["chosen"] and saved["biases"] is None
    assert set(saved["selection"]["candidates"]) == {"blend", "mean", "steady", "fragile"}
    for cand in saved["selection"]["candidates"].values():
        assert set(cand["estimates"]) == set(S.ESTIMATORS)
    model = FittedBlend.from_json(saved["pipeline"])
    views = [member_views(load_member(tmp_path / "oof" / n).test_logits, ["identity"], model.options)
             for n in model.members]
    with np.load(tmp_path / "oof" / "_blend" / "blend.npz") as z:
        assert np.allclose(apply_blend(model, views), z["test_probs"])
    expected = sel["expected"]["macro_f1"]
    assert abs(expected - written) < 0.1
    assert f"expected test macro-F1 {expected:.4f} ± {sel['expected']['std']:.4f}" in out
    # the ± holds the test images' draw and the estimators' disagreement on the written candidate
    e = saved["selection"]["expected"]
    spread = np.std([v["macro_f1"] for v in saved["selection"]["candidates"][sel["chosen"]]["estimates"].values()])
    assert e["spread"] == pytest.approx(spread) and e["spread"] > 0 and e["sampling"] > 0
    assert e["std"] == pytest.approx(np.hypot(e["sampling"], e["spread"]))
    assert e["sampling"] >= result.confidence["std"] - 1e-12


def test_without_a_shift_the_fitted_blend_is_written(tmp_path, capsys):
    _members(tmp_path, {"one": (0.8, 0.8), "two": (0.75, 0.75)})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend", method="greedy")
    out = capsys.readouterr().out
    assert result.selection["chosen"] == "blend" and "wrote" not in out and "below the nested CV" not in out


def test_select_blend_keeps_the_fitted_blend_and_says_what_the_test_may_cost(tmp_path, capsys):
    _members(tmp_path, {"steady": (0.75, 0.75), "fragile": (0.97, 0.3)})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend", method="greedy", select="blend")
    out = capsys.readouterr().out
    assert result.selection["chosen"] == "blend" and "below the nested CV" in out


def test_shift_weights_follow_the_scans_warning(tmp_path, capsys):
    _members(tmp_path, {"steady": (0.75, 0.75), "fragile": (0.97, 0.3)})
    folds = tmp_path / "folds"
    folds.mkdir()
    out_dir = tmp_path / "oof" / "_blend"
    result = run_blend(tmp_path / "oof", None, out_dir, folds_dir=folds, method="greedy")
    assert not result.importance["applied"] and "importance weights" not in capsys.readouterr().out
    (folds / "shift.json").write_text(json.dumps({"optimistic": True}))
    result = run_blend(tmp_path / "oof", None, out_dir, folds_dir=folds, method="greedy")
    out = capsys.readouterr().out
    assert result.importance["applied"] and result.importance["ess"] > 0
    assert "importance weights (OOF rows weighted to look like the test)" in out
    assert json.loads((out_dir / "blend.json").read_text())["importance"]["applied"] is True
    result = run_blend(tmp_path / "oof", None, out_dir, folds_dir=folds, method="greedy", shift_weights="off")
    assert not result.importance["applied"]
    with pytest.raises(ValueError, match="shift_weights"):
        BlendOptions(shift_weights="sometimes")


def test_a_test_far_from_every_oof_row_keeps_the_fitted_blend_and_says_why(tmp_path, capsys):
    """Fold models far surer of every test image than of any OOF row (a new image source the models are
    confidently wrong on): the members' outputs separate test from OOF, no estimate is trusted to choose; the
    members disagree on the test as often as chance says, and the estimates read from that agreement fall
    where every confidence stays near 1. (Not to chance: the line is fitted on the members, and their
    blend, right on 96% of the OOF rows because their errors there were independent, still reads high.)"""
    rng = np.random.default_rng(7)
    n, m, n_folds = 900, 600, 3
    y = rng.integers(0, N_CLASSES, n)
    for name, acc in (("a", 0.8), ("b", 0.75)):
        _, probs = predictions(n, acc, rng, y)
        pred = rng.integers(0, N_CLASSES, m)       # sure of every test image, right by chance
        test = np.full((n_folds, m, N_CLASSES), 0.002)
        test[:, np.arange(m), pred] = 0.996
        save_member(tmp_path / "oof" / name, classes=CLASSES3, ids=[f"i{i}" for i in range(n)], labels=y,
                    fold=np.arange(n) % n_folds, views=["identity"], oof_logits=np.log(probs)[None],
                    test_ids=[f"t{i}" for i in range(m)], test_logits=np.log(test)[:, None], scores={})
    result = run_blend(tmp_path / "oof", None, tmp_path / "oof" / "_blend", method="greedy")
    out = capsys.readouterr().out
    assert result.selection["chosen"] == "blend" and result.selection["domain_auc"] > 0.9
    assert not result.selection["estimates_trusted"]
    assert "the members' outputs tell the test from the OOF rows at ROC AUC" in out
    cands = result.selection["candidates"]
    assert result.selection["expected"]["estimator"] == "aol"
    for name in ("a", "b"):  # read from agreement the members fall to about half; read from confidence, near 1
        assert cands[name]["estimates"]["aol"]["macro_f1"] < 0.6 < 0.9 < cands[name]["estimates"]["atc"]["macro_f1"]
    assert cands["blend"]["estimates"]["aol"]["macro_f1"] < cands["blend"]["estimates"]["atc"]["macro_f1"] - 0.1
    assert "reads the members' agreement on the test" in out


def _sure(y, accuracy, rng, c=5):
    """Probabilities right on `accuracy` of the rows, errors independent of other models', and as sure
    when wrong as when right (0.7-0.98): a model confidently wrong on images unlike its training data."""
    n = len(y)
    right = rng.random(n) < accuracy
    pred = np.where(right, y, (y + rng.integers(1, c, n)) % c)
    conf = rng.uniform(0.7, 0.98, n)
    probs = np.repeat(((1 - conf) / (c - 1))[:, None], c, axis=1)
    probs[np.arange(n), pred] = conf
    return probs


def test_agreement_on_the_line_sees_confidently_wrong_models_that_confidence_cannot():
    """Three members as sure on the test as on their OOF rows, but right far less often there: every
    confidence-reading estimator keeps the OOF score, while the members' agreement falls with their
    accuracy, and the agreement line moves every member's estimate down towards its truth (errors independent
    across members only roughly follow the line: the line's error is a quarter of ATC's here, not zero)."""
    rng = np.random.default_rng(6)
    n, m, folds, c = 3000, 2000, 3, 5
    y, test_y = rng.integers(0, c, n), rng.integers(0, c, m)
    fold = np.arange(n) % folds
    # each member's fold models err together, as trained ones do (so they agree with each other: the
    # coherence of fold pipelines, below, has nothing to correct), while members err independently
    models = [(_sure(y, oof_acc, rng), np.stack([_sure(test_y, test_acc, rng)] * folds))
              for oof_acc, test_acc in ((0.9, 0.55), (0.8, 0.4), (0.7, 0.3))]
    line = S.agreement_line(models, fold)
    assert line["points"] == 3 * folds and line["slope"] > 0
    errors = {"atc": [], "aol": []}
    for oof, fold_test in models:
        truth = np.mean([macro_f1(test_y, t.argmax(1), c) for t in fold_test])
        parts = S.FoldParts(y, oof, fold, fold_test, ("atc", "aol"), line=line)
        assert parts.estimate("atc") - truth > 0.25 and parts.estimate("aol") < parts.estimate("atc") - 0.25
        for name, got in errors.items():
            got.append(abs(parts.estimate(name) - truth))
    assert np.mean(errors["aol"]) < np.mean(errors["atc"]) / 3
    assert S.agreement_line(models[:1], fold) is None
    assert S.agreement_line(models[:2], fold)["slope"] == 1.0


def test_fold_pipelines_that_disagree_cannot_all_be_counted_right():
    """Per test image, at most one of the classes the fold pipelines predict is its label: the per-class chances
    are scaled to sum to 1 at most. Three fold models of one member, each sure of itself (0.7-0.98) and right on
    60% of the test with errors of their own: every estimator that reads confidence counts them right nearly
    everywhere (their OOF rows say sure means right); their disagreement puts the estimate near the truth."""
    same = S.coherent(np.array([[0.9, 0.2], [0.8, 0.3]]), np.array([[1, 0], [1, 2]]), 3)
    np.testing.assert_allclose(same, [[0.9, 0.2], [0.8, 0.3]])   # agreeing, or chances summing to <= 1: kept
    split = S.coherent(np.full((5, 1), 0.99), np.array([[0], [0], [1], [1], [1]]), 2)
    np.testing.assert_allclose(split[:, 0], 0.5)                  # 0.99 + 0.99 for two classes: halved
    rng = np.random.default_rng(8)
    n, m, folds, c = 3000, 2000, 3, 5
    y, test_y = rng.integers(0, c, n), rng.integers(0, c, m)
    fold = np.arange(n) % folds
    oof, fold_test = _sure(y, 0.9, rng), np.stack([_sure(test_y, 0.6, rng) for _ in range(folds)])
    truth = np.mean([macro_f1(test_y, t.argmax(1), c) for t in fold_test])
    alone = np.mean([S.correct_per_image("atc", y[fold == k], oof[fold == k], fold_test[k]).mean() for k in range(3)])
    assert alone > 0.85   # each fold pipeline read alone
    plain = S.FoldParts(y, oof, fold, fold_test, ("atc", "doc"))   # as the estimators that choose read them
    assert plain.estimate("atc") - truth > 0.2 and plain.estimate("doc") - truth > 0.2
    parts = S.FoldParts(y, oof, fold, fold_test, ("atc", "doc"), coherent_for=("atc",))
    assert abs(parts.estimate("atc") - truth) < 0.06 and parts.estimate("doc") == plain.estimate("doc")


def test_under_a_shift_warning_the_expected_score_reads_the_fold_models_disagreement(tmp_path, capsys):
    """Three members whose fold models are sure of themselves on the test and err each in its own way: with the
    scan's shift warning the expected score counts them right together at most once where they disagree, and
    falls towards the truth; without it (each fold's OOF calibration holds) the number is the line's alone.
    What chooses is the same either way."""
    rng = np.random.default_rng(9)
    n, m, n_folds, c = 900, 600, 3, len(CLASSES3)
    y, test_y = rng.integers(0, c, n), rng.integers(0, c, m)
    for name, acc in (("a", 0.9), ("b", 0.85), ("c", 0.8)):
        test = np.stack([_sure(test_y, acc - 0.25, rng, c) for _ in range(n_folds)])
        save_member(tmp_path / "oof" / name, classes=CLASSES3, ids=[f"i{i}" for i in range(n)], labels=y,
                    fold=np.arange(n) % n_folds, views=["identity"], oof_logits=np.log(_sure(y, acc, rng, c))[None],
                    test_ids=[f"t{i}" for i in range(m)], test_logits=np.log(test)[:, None], scores={})
    folds = tmp_path / "folds"
    folds.mkdir()
    out_dir = tmp_path / "oof" / "_blend"
    quiet = run_blend(tmp_path / "oof", None, out_dir, folds_dir=folds, method="greedy", bias=False).selection
    (folds / "shift.json").write_text(json.dumps({"optimistic": True}))
    warned = run_blend(tmp_path / "oof", None, out_dir, folds_dir=folds, method="greedy", bias=False).selection
    capsys.readouterr()
    assert warned["expected"]["one_fold_model"] < quiet["expected"]["one_fold_model"] - 0.05
    for name in ("a", "b", "c"):
        assert warned["candidates"][name]["estimates"]["atc"] == quiet["candidates"][name]["estimates"]["atc"]
