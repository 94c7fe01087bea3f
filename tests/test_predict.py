"""Loading an experiment's fold models or the blend, and predicting files/folders with TTA.

Checkpoints are real (`checkpoint_payload` of randomly initialised cnn_tiny networks), written in
milliseconds instead of trained, so the loading and combining code is exercised exactly as in a run.
"""
import argparse
import json

import imagegen as gen
import numpy as np
import pandas as pd
import pytest
import torch

from foldblend.ensemble import methods as E
from foldblend.ensemble.fitted import BlendOptions, FittedBlend
from foldblend.errors import FoldblendError
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import list_images, predict_images
from foldblend.members.cnn.models import Arch, checkpoint_payload, create_model
from foldblend.paths import Project
from foldblend.stages.predict import add_arguments, run

CLASSES = ["circle", "square", "stripes"]


def make_experiment(project: Project, exp: str, folds: int = 2, img_size: int = 16,
                    tta=("identity", "hflip"), classes=CLASSES, seed: int = 0) -> None:
    """models/<exp>/fold_<k>/best.pt for `folds` randomly initialised cnn_tiny models."""
    for k in range(folds):
        torch.manual_seed(seed * 100 + k)
        arch = Arch("cnn_tiny", len(classes))
        model = create_model(arch)
        with torch.no_grad():  # a spread of logits, so TTA views and folds visibly disagree
            model.head.net[-1].weight.mul_(20.0)
        path = project.model_dir(exp, k) / "best.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint_payload(model.eval(), arch, classes, img_size, list(tta), (0.5,) * 3, (0.25,) * 3,
                                      config={"model": "cnn_tiny"}, fold=k), path)


def make_labelled_folder(folder, per_class: int = 4, classes=CLASSES, size: int = 24) -> list:
    """folder/<class>/img_<i>.png of generated shapes; returns the paths in sorted order."""
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            paths.append(gen.save(folder / name / f"img_{i}.png", gen.shapes(c * 100 + i, size)))
    return sorted(paths)


def make_blend(project: Project, weights: dict, biases=None, method: str = "greedy") -> None:
    """oof/_blend/blend.json of a blend with these member weights and decision biases (nothing else fitted)."""
    blend_dir = project.oof / "_blend"
    blend_dir.mkdir(parents=True, exist_ok=True)
    fitted = FittedBlend.unfitted(list(weights), BlendOptions(method=method))
    fitted.weights = np.array(list(weights.values()), dtype=np.float64)
    fitted.biases = None if biases is None else np.asarray(biases, dtype=np.float64)
    (blend_dir / "blend.json").write_text(json.dumps({
        "method": method, "members": list(weights), "weights": weights, "biases": biases,
        "cv_in_sample": {"macro_f1": 0.5}, "cv_nested": {"macro_f1": 0.4}, "classes": CLASSES,
        "pipeline": fitted.to_json()}))


@pytest.fixture()
def project(tmp_path):
    p = Project.at(tmp_path)
    make_experiment(p, "exp_a", folds=2, img_size=16, tta=("identity", "hflip"), seed=0)
    make_experiment(p, "exp_b", folds=1, img_size=12, tta=("identity",), seed=1)
    return p


def test_experiment_predicts_the_mean_of_its_folds_and_views(project, tmp_path):
    paths = make_labelled_folder(tmp_path / "imgs", per_class=2)
    predictor = load_predictor(project, "exp_a")
    assert predictor.classes == CLASSES and len(predictor.members["exp_a"]) == 2
    pred = predict_images(predictor, paths, batch_size=4, progress=False)
    assert pred.ok.all() and not pred.failures
    np.testing.assert_allclose(pred.probs.sum(axis=1), 1.0, atol=1e-6)

    # the same number by hand: each fold model under each view, probabilities averaged
    from foldblend.data.cache import resize_square
    from foldblend.data.read import load_rgb
    from foldblend.members.transforms import TTA_VIEWS, to_input

    x_uint8 = torch.from_numpy(np.stack([resize_square(load_rgb(p), 16) for p in paths]))
    expected = []
    for fm in predictor.members["exp_a"]:
        x = to_input(x_uint8, fm.mean, fm.std, "cpu")
        with torch.no_grad():
            expected += [torch.softmax(fm.model(TTA_VIEWS[v](x)).double(), 1).numpy() for v in fm.views]
    np.testing.assert_allclose(pred.probs, np.mean(expected, axis=0), atol=1e-5)


def test_blend_applies_member_weights_and_biases(project, tmp_path):
    paths = make_labelled_folder(tmp_path / "imgs", per_class=2)
    biases = [0.0, 0.5, -0.25]
    make_blend(project, {"exp_a": 0.7, "exp_b": 0.3}, biases)
    blend = load_predictor(project, "blend")
    assert set(blend.members) == {"exp_a", "exp_b"}
    got = predict_images(blend, paths, progress=False).probs
    a = predict_images(load_predictor(project, "exp_a"), paths, progress=False).probs
    b = predict_images(load_predictor(project, "exp_b"), paths, progress=False).probs
    expected = E.apply_biases(0.7 * a + 0.3 * b, np.array(biases))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_zero_weight_members_are_not_loaded(project):
    make_blend(project, {"exp_a": 1.0, "exp_b": 0.0})
    assert list(load_predictor(project, "blend").members) == ["exp_a"]


def test_a_blend_without_its_pipeline_or_of_an_unknown_method_is_refused(project):
    """No second way to combine members: a blend.json without the fitted pipeline is an error, not a guess."""
    make_blend(project, {"exp_a": 0.25, "exp_b": 0.75})
    path = project.oof / "_blend" / "blend.json"
    meta = json.loads(path.read_text())
    meta["pipeline"]["options"]["method"] = "median"
    path.write_text(json.dumps(meta))
    with pytest.raises(FoldblendError, match="method='median' is not one of"):
        load_predictor(project, "blend")
    del meta["pipeline"]
    path.write_text(json.dumps(meta))
    with pytest.raises(FoldblendError, match="no fitted pipeline.*foldblend blend"):
        load_predictor(project, "blend")


def test_missing_blend_and_missing_experiment_are_clear_errors(project):
    with pytest.raises(FileNotFoundError, match="foldblend blend"):
        load_predictor(project, "blend")
    with pytest.raises(FileNotFoundError, match="exp_a, exp_b"):
        load_predictor(project, "nope")


def test_unreadable_image_is_reported_and_left_out(project, tmp_path):
    paths = make_labelled_folder(tmp_path / "imgs", per_class=1)
    broken = tmp_path / "imgs" / "circle" / "broken.png"
    broken.write_bytes(b"not an image")
    pred = predict_images(load_predictor(project, "exp_a"), paths + [broken], progress=False)
    assert pred.ok.tolist() == [True] * len(paths) + [False]
    assert list(pred.failures) == [str(broken)] and "not a readable image" in pred.failures[str(broken)]
    assert np.isnan(pred.probs[-1]).all()


def _predict_cli(project, *argv) -> pd.DataFrame:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = run(parser.parse_args(list(argv)), project)
    return pd.read_csv(out, dtype={"id": str})


def test_predict_csv_has_sorted_top_k_for_a_folder(project, tmp_path, capsys):
    make_labelled_folder(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image, not listed")
    (tmp_path / "imgs" / "square" / "bad.jpg").write_bytes(b"")
    df = _predict_cli(project, "--images", str(tmp_path / "imgs"), "--exp", "exp_a", "--top-k", "2",
                      "--out", str(tmp_path / "pred.csv"))
    assert list(df.columns) == ["id", "predicted", "class_1", "prob_1", "class_2", "prob_2"]
    assert len(df) == 6 and df["id"].iloc[0] == "circle/img_0.png"
    assert (df["predicted"] == df["class_1"]).all()
    assert (df["prob_1"] >= df["prob_2"]).all() and (df[["prob_1", "prob_2"]].sum(axis=1) <= 1 + 1e-6).all()
    assert set(df["class_1"]) <= set(CLASSES)
    assert "bad.jpg" in capsys.readouterr().out


def test_predict_single_files_with_blend_default_out(project, tmp_path):
    paths = make_labelled_folder(tmp_path / "imgs", per_class=1)
    make_blend(project, {"exp_a": 0.5, "exp_b": 0.5})
    df = _predict_cli(project, "--images", *map(str, paths[:2]), "--exp", "blend", "--top-k", "5")
    assert (project.oof / "predict_blend.csv").exists()
    assert list(df.columns)[-2:] == ["class_3", "prob_3"]  # top-k capped at the class count
    np.testing.assert_allclose(df[["prob_1", "prob_2", "prob_3"]].sum(axis=1), 1.0, atol=1e-5)
    assert df["id"].tolist() == [p.as_posix() for p in paths[:2]]


def make_members(project: Project, exps, test_paths: list, n: int = 30, signal=None, batch_size: int = 4,
                 seed: int = 0) -> None:
    """oof/<exp>/ for checkpoints under models/: OOF logits made up (with `signal[i]` on the true class, 1.0
    by default), test logits of `test_paths` by the checkpoints themselves, as `foldblend train` makes them."""
    from foldblend.artifacts import save_member
    from foldblend.data.cache import resize_square
    from foldblend.data.read import load_rgb
    from foldblend.inference.predictor import fold_model_logits

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    for i, exp in enumerate(exps):
        models = load_predictor(project, exp).members[exp]
        test_logits = np.stack([fold_model_logits(fm, np.stack([resize_square(load_rgb(p), fm.img_size)
                                                                 for p in test_paths]), batch_size, "cpu", False)
                                for fm in models])
        views = models[0].views
        oof = rng.normal(0, 1, (len(views), n, 3)).astype(np.float32)
        oof[:, np.arange(n), labels] += 1.0 if signal is None else signal[i]
        save_member(project.oof_dir(exp), classes=CLASSES, ids=[f"i{k}" for k in range(n)], labels=labels,
                    fold=np.arange(n) % 2, views=views, oof_logits=oof, test_ids=[p.name for p in test_paths],
                    test_logits=test_logits, scores={})


@pytest.mark.parametrize("options", [dict(method="greedy", bias=True, fold_combine="logit_mean"),
                                     dict(method="mean", tta="weighted", temperature=True, calibrate=True)])
def test_blend_prediction_equals_the_blends_own_test_probabilities(project, tmp_path, options):
    """Members' test logits come from the same checkpoints; run the real blend; predict must reproduce it."""
    from foldblend.stages.blend import run_blend

    paths = make_labelled_folder(tmp_path / "imgs", per_class=2)
    make_members(project, ("exp_a", "exp_b"), paths)
    run_blend(project.oof, None, project.oof / "_blend", **options)
    with np.load(project.oof / "_blend" / "blend.npz") as z:
        expected = z["test_probs"]
    got = predict_images(load_predictor(project, "blend"), paths, progress=False).probs
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_chunked_prediction_equals_one_pass(tmp_path, monkeypatch):
    """Bounded memory: predicting a few images at a time gives the same probabilities as one pass."""
    import foldblend.inference.predictor as inf

    project = Project.at(tmp_path / "proj")
    make_experiment(project, "exp_a", folds=2, img_size=16)
    make_labelled_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "imgs" / "circle" / "broken.png").write_bytes(b"not a png")
    paths = list_images([tmp_path / "imgs"])
    predictor = load_predictor(project, "exp_a")
    whole = predict_images(predictor, paths, progress=False)
    monkeypatch.setattr(inf, "CHUNK", 4)
    chunked = predict_images(predictor, paths, progress=False)
    np.testing.assert_array_equal(chunked.ok, whole.ok)
    assert (~whole.ok).sum() == 1 and list(chunked.failures) == list(whole.failures)
    np.testing.assert_allclose(chunked.probs[whole.ok], whole.probs[whole.ok], rtol=1e-5, atol=1e-6)


def test_chunked_prediction_keeps_rank_blends_exact(tmp_path, monkeypatch):
    """Rank averaging ranks over all rows: chunks must not be combined one by one."""
    import foldblend.inference.predictor as inf
    from foldblend.inference.predictor import Predictor

    project = Project.at(tmp_path / "proj")
    for name in ("exp_a", "exp_b"):
        make_experiment(project, name, folds=2, img_size=16)
    make_labelled_folder(tmp_path / "imgs", per_class=3)
    paths = list_images([tmp_path / "imgs"])
    predictor = Predictor("ranked", CLASSES, {name: load_predictor(project, name).members[name]
                                              for name in ("exp_a", "exp_b")},
                          FittedBlend.unfitted(["exp_a", "exp_b"], BlendOptions(method="rank")))
    whole = predict_images(predictor, paths, progress=False)
    monkeypatch.setattr(inf, "CHUNK", 2)
    np.testing.assert_allclose(predict_images(predictor, paths, progress=False).probs, whole.probs, atol=1e-12)
