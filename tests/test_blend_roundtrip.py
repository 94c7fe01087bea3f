"""One blend pipeline: what `blend` fitted is saved, exported and applied by predict exactly.

For every method (and TTA weighting, temperatures, calibration and biases where they apply): blend members
whose test logits are their checkpoints' own, export the blend as a bundle, load the bundle elsewhere and
predict the test images: the probabilities are blend.npz's `test_probs`. `--method rank` ranks within the
images predicted together, so predicting the whole test set at once gives the blend's test predictions.
"""
import argparse
import json
import shutil
from dataclasses import asdict, fields

import numpy as np
import pytest
from test_predict import make_experiment, make_labelled_folder, make_members

from foldblend.ensemble.fitted import BlendOptions, FittedBlend
from foldblend.ensemble.methods import COMBINE_METHODS
from foldblend.ensemble.pipeline import apply_blend
from foldblend.inference.bundle import BundleError, export_bundle
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import predict_images
from foldblend.paths import Project
from foldblend.stages.blend import add_arguments, options_from_args, run_blend

EXPS = ("exp_a", "exp_b", "exp_c")
BATCH = 4  # the test logits' batch size, so predict computes the very same logits

OPTIONS = [
    dict(method="mean"),
    dict(method="logit_mean", fold_combine="logit_mean"),
    dict(method="rank"),
    dict(method="power", power=3.0, tta="weighted", temperature=True),
    dict(method="scipy", calibrate=True, bias=True),
    dict(method="greedy", rounds=5, tta="weighted", temperature=True, bias=True),
    dict(method="stack"),
    dict(method="stack", tta="weighted", temperature=True, calibrate=True, bias=True),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three members of fold models (two of them with TTA views), the test images, blended nowhere yet."""
    root = tmp_path_factory.mktemp("roundtrip")
    project = Project.at(root / "proj")
    make_experiment(project, "exp_a", folds=2, img_size=16, tta=("hflip", "identity"), seed=0)
    make_experiment(project, "exp_b", folds=2, img_size=12, tta=("identity",), seed=1)
    make_experiment(project, "exp_c", folds=2, img_size=16, tta=("identity", "hflip"), seed=2)
    paths = make_labelled_folder(root / "test_images", per_class=3)
    make_members(project, EXPS, paths, n=60, signal=(1.5, 0.8, 0.0), batch_size=BATCH)
    return project, paths


def test_every_method_is_covered():
    assert {o["method"] for o in OPTIONS} == set(COMBINE_METHODS)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_a_bundle_predicts_the_blends_test_probabilities(setup, tmp_path, options):
    project, paths = setup
    result = run_blend(project.oof, None, project.oof / "_blend", **options)
    with np.load(project.oof / "_blend" / "blend.npz") as z:
        expected = z["test_probs"]
    np.testing.assert_array_equal(expected, result.test_probs)
    out = export_bundle(project, "blend", project.root / "export" / "blend")
    moved = shutil.copytree(out, tmp_path / "elsewhere")
    bundle = load_predictor(Project.at(tmp_path / "other"), str(moved))
    assert bundle.blend.to_json() == result.model.only(bundle.blend.members).to_json()
    if options["method"] in ("mean", "scipy", "greedy"):  # a member the blend gives no weight is not shipped
        assert list(bundle.members) == [n for n, w in result.weights.items() if w > 0]
    else:
        assert list(bundle.members) == list(EXPS)
    got = predict_images(bundle, paths, batch_size=BATCH, progress=False)
    assert got.ok.all() and [p.name for p in paths] == list(result.test_ids)
    np.testing.assert_allclose(got.probs, expected, rtol=0, atol=1e-6)
    in_project = predict_images(load_predictor(project, "blend"), paths, batch_size=BATCH, progress=False)
    np.testing.assert_allclose(in_project.probs, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options", [OPTIONS[5], OPTIONS[7]], ids=["greedy", "stack"])
def test_the_saved_pipeline_applies_bit_for_bit(setup, options):
    """blend.json's `pipeline`, read back, is the fitted blend: same JSON, same test predictions to the bit."""
    from foldblend.artifacts import load_member
    from foldblend.ensemble.pipeline import member_views

    project, _ = setup
    result = run_blend(project.oof, None, project.oof / "_blend", **options)
    meta = json.loads((project.oof / "_blend" / "blend.json").read_text())
    fitted = FittedBlend.from_json(meta["pipeline"])
    assert fitted.to_json() == meta["pipeline"] and fitted.members == list(EXPS)
    assert meta["pipeline"]["options"] == meta["options"] == asdict(BlendOptions(**options))
    members = [load_member(project.oof_dir(n)) for n in EXPS]
    views = [member_views(m.test_logits, m.views, fitted.options) for m in members]
    np.testing.assert_array_equal(apply_blend(fitted, views), result.test_probs)


def test_old_or_broken_bundles_are_refused_with_the_fix(setup):
    project, _ = setup
    run_blend(project.oof, None, project.oof / "_blend", method="stack")
    out = export_bundle(project, "blend", project.root / "export" / "refused")
    meta = json.loads((out / "bundle.json").read_text())
    meta["blend"]["options"]["method"] = "median"
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="method='median' is not one of"):
        load_predictor(project, str(out))
    meta["blend"]["options"]["method"], meta["blend"]["stacker"] = "stack", None
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="without a stacker"):
        load_predictor(project, str(out))
    del meta["blend"]
    meta["format"], meta["combine"] = "foldblend-bundle/1", {"method": "stack"}
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle\.json: bundle format 'foldblend-bundle/1'.*export it again") as e:
        load_predictor(project, str(out))
    assert "\n" not in str(e.value) and str(out) in str(e.value)


def test_blend_options_are_spelled_once():
    """The command line is BlendOptions' fields: every one a flag with its default; parsed back, equal."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert options_from_args(parser.parse_args([])) == BlendOptions()
    flags = {a.dest: a for a in parser._actions}
    for f in fields(BlendOptions):
        assert flags[f.name].default == f.default and flags[f.name].help == f.metadata["help"]
    args = parser.parse_args(["--method", "greedy", "--greedy-init", "2", "--bias", "--power", "1.5"])
    assert options_from_args(args) == BlendOptions(method="greedy", greedy_init=2, bias=True, power=1.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--tta", "median"])


def test_a_trained_projects_stacked_blend_travels_as_a_bundle(trained_project, tmp_path, capsys):
    """The stages end to end on a trained project: blend (a stacker, TTA weights, calibration, biases),
    export, and the bundle alone predicts the test images as the blend did."""
    from hostile import cli, copy_project

    from foldblend.data.tables import read_table

    root = copy_project(trained_project, tmp_path / "proj")
    assert cli(root, "blend", "--method", "stack", "--tta", "weighted", "--calibrate", "--bias") == 0
    assert cli(root, "export", "--exp", "blend", str(root / "export" / "blend")) == 0
    bundle = load_predictor(Project.at(tmp_path / "other"), str(shutil.copytree(root / "export" / "blend",
                                                                                 tmp_path / "shipped")))
    with np.load(root / "oof" / "_blend" / "blend.npz") as z:
        test_ids, expected = z["test_ids"].tolist(), z["test_probs"]
    assert test_ids == read_table(root / "input" / "sample_submission.csv")["Id"].tolist()
    got = predict_images(bundle, [root / "input" / "testset" / i for i in test_ids], progress=False)
    np.testing.assert_allclose(got.probs, expected, rtol=0, atol=1e-6)
