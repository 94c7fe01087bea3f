import argparse
import json

import numpy as np
import pytest

from foldblend.artifacts import Member, save_member
from foldblend.ensemble import methods as E
from foldblend.ensemble.pipeline import blend_arrays, check_alignment
from foldblend.metrics import METRICS, macro_f1, softmax
from foldblend.paths import Project
from foldblend.stages.blend import add_arguments, run, run_blend

CLASSES = ["a", "b", "c"]


def member(name, oof_probs, labels, fold=None, test_probs=None, views=("identity",), ids=None, classes=CLASSES):
    """A Member from probabilities (logits = log p): (N, C) or (V, N, C) OOF, (M, C) test."""
    oof = np.asarray(oof_probs, dtype=np.float64)
    oof = oof[None] if oof.ndim == 2 else oof
    n = oof.shape[1]
    test = np.full((2, len(classes)), 1.0 / len(classes)) if test_probs is None else np.asarray(test_probs)
    test_logits = np.broadcast_to(np.log(np.clip(test, 1e-12, 1)), (2, len(views)) + test.shape)
    return Member(name=name, classes=list(classes), ids=np.array([f"img{i}" for i in range(n)]) if ids is None else ids,
                  labels=np.asarray(labels), fold=np.arange(n) % 3 if fold is None else np.asarray(fold),
                  views=list(views), oof_logits=np.log(np.clip(oof, 1e-12, 1)).astype(np.float32),
                  test_ids=np.array([f"t{i}" for i in range(len(test))]), test_logits=test_logits.astype(np.float32),
                  scores={})


# ----------------------------------------------------------------------------- combinations with known answers

def test_mean_of_known_probabilities():
    p1 = np.array([[[0.6, 0.3, 0.1]], [[0.2, 0.2, 0.6]]])
    np.testing.assert_allclose(E.mean_probs(p1), [[0.4, 0.25, 0.35]])
    np.testing.assert_allclose(E.mean_probs(p1, [3, 1]), [[0.5, 0.275, 0.225]])


def test_logit_mean_is_renormalised_geometric_mean():
    probs = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    geo = np.sqrt([0.45, 0.05])
    np.testing.assert_allclose(E.logit_mean(probs), [geo / geo.sum()])  # = [0.75, 0.25]
    np.testing.assert_allclose(E.logit_mean(np.array([[[0.8, 0.2]], [[0.2, 0.8]]])), [[0.5, 0.5]])


def test_rank_average_of_known_arrays():
    m1 = [[0.1, 0.9], [0.5, 0.5], [0.9, 0.1]]
    m2 = [[0.2, 0.8], [0.8, 0.2], [0.7, 0.3]]
    # class-0 ranks /3: m1 [1,2,3]/3, m2 [1,3,2]/3 -> mean [1, 2.5, 2.5]/3; class 1 mirrors: [3, 1.5, 1.5]/3
    expected = np.array([[1, 3], [2.5, 1.5], [2.5, 1.5]]) / 4.0
    np.testing.assert_allclose(E.rank_average(np.array([m1, m2])), expected)


def test_power_mean_of_known_arrays():
    probs = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])
    np.testing.assert_allclose(E.power_mean(probs, 2.0), [[0.625 / 0.75, 0.125 / 0.75]])


def test_fold_combination_prob_vs_logit_mean():
    logits = np.log(np.array([[[[0.9, 0.1]]], [[[0.5, 0.5]]]]))  # (F=2, V=1, M=1, C=2)
    np.testing.assert_allclose(E.combine_folds(logits, "prob_mean"), [[[0.7, 0.3]]])
    np.testing.assert_allclose(E.combine_folds(logits, "logit_mean"), [[[0.75, 0.25]]])
    with pytest.raises(ValueError, match="fold combination"):
        E.combine_folds(logits, "median")


# ----------------------------------------------------------------------------- fitted steps

def _perfect_and_wrong(n=30, c=3):
    y = np.arange(n) % c
    perfect = np.full((n, c), 0.1 / (c - 1))
    perfect[np.arange(n), y] = 0.9
    wrong = np.roll(perfect, 1, axis=1)   # confidently predicts the next class
    return y, np.stack([perfect, wrong])


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy", "log_loss"])
def test_greedy_puts_all_weight_on_the_perfect_member(metric):
    y, probs = _perfect_and_wrong()
    np.testing.assert_allclose(E.greedy_select(probs, y, metric, rounds=10), [1.0, 0.0])


def test_greedy_weights_are_pick_counts_over_total():
    y, probs = _perfect_and_wrong()
    weights = E.greedy_select(np.concatenate([probs, probs[:1]]), y, "macro_f1", rounds=7, max_init=1)
    assert weights.sum() == pytest.approx(1.0)
    assert (weights * 8) == pytest.approx(np.round(weights * 8))  # 1 initial + 7 rounds = 8 picks
    assert weights[1] == 0.0


def test_scipy_weights_prefer_the_informative_member():
    y, probs = _perfect_and_wrong()
    uniform = np.full_like(probs[0], 1 / 3)
    weights = E.fit_scipy_weights(np.stack([probs[0], uniform]), y)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    assert weights[0] > 0.99


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    assert E.fit_temperature(3.0 * true_logits, y) == pytest.approx(3.0, rel=0.1)


def test_identity_weight_picks_the_informative_view():
    y, probs = _perfect_and_wrong()
    assert E.fit_identity_weight(np.stack([probs[0], probs[1]]), y) == 1.0
    assert E.fit_identity_weight(np.stack([probs[1], probs[0], probs[0]]), y) == 0.0


def test_bias_tuning_flips_a_known_threshold_case():
    # class 1 is rare and under-confident: its rows score 0.4, so argmax never predicts it
    y = np.array([0] * 8 + [1] * 2)
    p1 = np.array([0.1] * 4 + [0.3] * 4 + [0.4, 0.4])
    probs = np.stack([1 - p1, p1], axis=1)
    assert macro_f1(y, probs.argmax(1), 2) == pytest.approx((16 / 18 + 0) / 2)
    biases = E.tune_biases(np.log(probs), y, "macro_f1")
    tuned = E.apply_biases(probs, biases).argmax(1)
    np.testing.assert_array_equal(tuned, y)
    assert macro_f1(y, tuned, 2) == 1.0
    # rows flip to class 1 when b1 - b0 > log(p0 / p1): 0.4-rows need > log(0.6/0.4) = 0.41, 0.3-rows
    # must stay below log(0.7/0.3) = 0.85; 0.5 is the smallest |bias| on the 0.1-step grid that does both
    assert biases[1] - biases[0] == pytest.approx(0.5)
    assert np.abs(biases).sum() == pytest.approx(0.5)  # only one class moved
    with pytest.raises(ValueError, match="decision metric"):
        E.tune_biases(np.log(probs), y, "log_loss")


@pytest.mark.parametrize("metric", ["macro_f1", "weighted_f1", "accuracy"])
def test_bias_grid_scores_from_counts_equal_brute_force(metric):
    rng = np.random.default_rng(3)
    n, c, cls = 500, 5, 2
    y = rng.integers(0, c, n)
    scores = np.log(softmax(rng.normal(0, 1, (n, c)) + np.eye(c)[y]))
    others = scores.copy()
    others[:, cls] = -np.inf
    grid = E.BIAS_GRID
    decisions = np.where(scores[:, cls][None] + grid[:, None] > others.max(1)[None], cls, others.argmax(1)[None])
    brute = np.array([METRICS[metric](y, d, c) for d in decisions])
    fast = E.scores_over_bias_grid(scores[:, cls], others.max(1), others.argmax(1), y, cls, grid, metric, c)
    np.testing.assert_allclose(fast, brute, atol=1e-12)


# ----------------------------------------------------------------------------- blend_arrays

def test_blend_mean_reports_members_and_equal_in_sample_and_nested():
    y, probs = _perfect_and_wrong()
    result = blend_arrays([member("good", probs[0], y), member("bad", probs[1], y)])
    np.testing.assert_allclose(result.oof_probs, probs.mean(axis=0), atol=1e-6)
    assert result.weights == {"good": 0.5, "bad": 0.5}
    assert result.member_scores["good"]["macro_f1"] == 1.0 and result.member_scores["bad"]["macro_f1"] == 0.0
    assert result.cv_in_sample == result.cv_nested and result.warnings == []
    assert result.test_probs.shape == (2, 3) and result.biases is None


def test_blend_greedy_end_to_end_weights():
    y, probs = _perfect_and_wrong()
    result = blend_arrays([member("good", probs[0], y), member("bad", probs[1], y)], method="greedy", rounds=5)
    assert result.weights == {"good": 1.0, "bad": 0.0}
    assert result.cv_nested["macro_f1"] == 1.0


def test_misaligned_ids_name_the_members():
    y, probs = _perfect_and_wrong()
    ids = np.array([f"img{i}" for i in range(len(y))])
    shuffled = ids.copy()
    shuffled[[3, 4]] = shuffled[[4, 3]]
    with pytest.raises(ValueError, match=r"'good' and 'shuffled' differ in ids: first difference at row 3"):
        check_alignment([member("good", probs[0], y, ids=ids), member("shuffled", probs[1], y, ids=shuffled)])


def test_different_classes_are_named():
    y, probs = _perfect_and_wrong()
    other = member("other", probs[1], y, classes=["a", "c", "b"])
    with pytest.raises(ValueError, match=r"'good' and 'other' have different classes"):
        blend_arrays([member("good", probs[0], y), other])


def _noise_members(seed, n_members=8, n=600, c=4, folds=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    fold = rng.permutation(np.arange(n) % folds)
    return [member(f"noise{k}", softmax(rng.normal(0, 1, (n, c))), y, fold=fold, classes=list("abcd"))
            for k in range(n_members)]


def test_weight_search_on_noise_shows_no_nested_gain():
    """The private-leaderboard trap: a search over pure noise looks better in-sample, not nested."""
    gains_in_sample, gains_nested, warned = [], [], 0
    for seed in range(3):
        members = _noise_members(seed)
        plain = blend_arrays(members, method="mean")
        searched = blend_arrays(members, method="greedy", bias=True, rounds=30)
        gains_in_sample.append(searched.cv_in_sample["macro_f1"] - plain.cv_nested["macro_f1"])
        gains_nested.append(searched.cv_nested["macro_f1"] - plain.cv_nested["macro_f1"])
        warned += bool(searched.warnings)
    assert np.mean(gains_in_sample) > 0.03          # the search fits the noise ...
    assert np.mean(gains_nested) < 0.02             # ... and nested CV sees no real gain
    assert warned == 3


def test_stack_and_all_flags_run_and_report_nested():
    rng = np.random.default_rng(1)
    n, c = 240, 3
    y = rng.integers(0, c, n)
    fold = np.arange(n) % 4
    members = [member(f"m{k}", softmax(2 * np.eye(c)[y][None] + rng.normal(0, 1.5, (2, n, c))), y, fold=fold,
                      views=("hflip", "identity")) for k in range(3)]
    result = blend_arrays(members, method="stack", temperature=True, calibrate=True, bias=True, tta="weighted")
    assert result.oof_probs.shape == (n, c) and np.allclose(result.oof_probs.sum(1), 1)
    assert sum(result.weights.values()) == pytest.approx(1.0)
    assert result.cv_nested["macro_f1"] > 0.6
    assert (result.biases is not None and result.biases.shape == (c,)) or \
        result.notes[0].startswith("class biases not applied: nested CV macro_f1")
    assert set(result.fitted["identity_weights"]) == {"m0", "m1", "m2"}


def test_class_biases_are_kept_only_where_they_earn_their_place_in_the_nested_cv():
    """Members that under-predict one class: biases repair it, the nested CV says so, they are kept. Members
    with no such skew: the biases fitted on noise do not beat the nested CV without them and are dropped."""
    rng = np.random.default_rng(3)
    n, c = 600, 3
    y = rng.integers(0, c, n)
    fold = np.arange(n) % 5
    skew = np.array([1.0, 1.0, 0.15])
    for shrink, kept in ((skew, True), (np.ones(c), False)):
        probs = [softmax(1.5 * np.eye(c)[y] + rng.normal(0, 1.0, (n, c))) * shrink for _ in range(2)]
        members = [member(f"m{k}", (p / p.sum(1, keepdims=True))[None], y, fold=fold) for k, p in enumerate(probs)]
        result = blend_arrays(members, method="mean", bias=True)
        assert (result.biases is not None) == kept
        assert (result.model.biases is not None) == kept
        assert bool(result.notes) != kept


@pytest.mark.parametrize("method", ["logit_mean", "rank", "power", "scipy"])
def test_every_method_beats_the_members_on_independent_noise(method):
    rng = np.random.default_rng(2)
    n, c = 300, 3
    y = rng.integers(0, c, n)
    members = [member(f"m{k}", softmax(1.5 * np.eye(c)[y] + rng.normal(0, 1, (n, c))), y) for k in range(5)]
    result = blend_arrays(members, method=method)
    best_member = max(s["macro_f1"] for s in result.member_scores.values())
    assert result.cv_nested["macro_f1"] > best_member


# ----------------------------------------------------------------------------- files and CLI

def _save(root, name, m):
    save_member(root / name, classes=m.classes, ids=m.ids, labels=m.labels, fold=m.fold, views=m.views,
                oof_logits=m.oof_logits, test_ids=m.test_ids, test_logits=m.test_logits, scores={})


def test_run_blend_discovers_members_and_writes_outputs(tmp_path, capsys):
    y, probs = _perfect_and_wrong()
    _save(tmp_path, "good", member("good", probs[0], y))
    _save(tmp_path, "bad", member("bad", probs[1], y))
    (tmp_path / "_blend").mkdir()
    (tmp_path / "unfinished").mkdir()  # no oof.npz: not a member
    run_blend(tmp_path, None, tmp_path / "_blend", method="greedy", rounds=3)
    table = capsys.readouterr().out
    assert "good" in table and "blend (greedy)" in table and "unfinished" not in table
    meta = json.loads((tmp_path / "_blend" / "blend.json").read_text())
    assert meta["members"] == ["bad", "good"] and meta["weights"] == {"bad": 0.0, "good": 1.0}
    assert meta["cv_nested"]["macro_f1"] == 1.0 and meta["options"]["rounds"] == 3
    with np.load(tmp_path / "_blend" / "blend.npz") as z:
        assert list(z["classes"]) == CLASSES and z["test_probs"].shape == (2, 3)
        np.testing.assert_array_equal(z["ids"], [f"img{i}" for i in range(len(y))])


def test_blend_from_args_passes_flags(tmp_path):
    y, probs = _perfect_and_wrong()
    project = Project.at(tmp_path)
    _save(project.oof, "good", member("good", probs[0], y))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--method", "power", "--fold-combine", "logit_mean", "--members", "good"])
    result = run(args, project)
    assert result.method == "power" and result.options["fold_combine"] == "logit_mean"
    assert (project.oof / "_blend" / "blend.json").exists()


def test_unknown_option_value_is_an_error():
    y, probs = _perfect_and_wrong()
    with pytest.raises(ValueError, match="method='median'"):
        blend_arrays([member("good", probs[0], y)], method="median")


def test_blend_leaves_out_members_made_on_another_split(tmp_path, capsys):
    """After the split changes, a member still in oof/ from before is named and left out, not blended."""
    import pandas as pd

    y, probs = _perfect_and_wrong()
    project = Project.at(tmp_path)
    current = member("current", probs[0], y)
    _save(project.oof, "current", current)
    old = member("old", probs[1], y)
    old.fold = (old.fold + 1) % (old.fold.max() + 1)  # same images, another split
    _save(project.oof, "old", old)
    project.folds_dir.mkdir(parents=True)
    pd.DataFrame({"image": current.ids, "label": current.labels, "group": range(len(y)),
                  "fold": current.fold}).to_csv(project.folds_csv, index=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    result = run(parser.parse_args([]), project)
    assert list(result.weights) == ["current"]
    assert "left out oof/old" in capsys.readouterr().out
