"""Bundles: written from an experiment or a blend, read back anywhere, refused with a reason when broken."""
import json
import shutil

import numpy as np
import pytest
from test_predict import make_blend, make_experiment, make_labelled_folder

from foldblend.inference.bundle import BundleError, export_bundle
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import predict_images
from foldblend.paths import Project


@pytest.fixture()
def project(tmp_path):
    p = Project.at(tmp_path / "proj")
    make_experiment(p, "exp_a", folds=2, img_size=16, tta=("identity", "hflip"), seed=0)
    make_experiment(p, "exp_b", folds=1, img_size=12, tta=("identity",), seed=1)
    return p


def test_a_blend_bundle_predicts_what_the_project_predicts(project, tmp_path):
    make_blend(project, {"exp_a": 0.6, "exp_b": 0.4}, biases=[0.0, 0.3, -0.2])
    out = export_bundle(project, "blend", project.root / "export" / "blend")
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(out, moved)
    shutil.rmtree(project.models)  # the bundle needs nothing of the project
    paths = make_labelled_folder(tmp_path / "imgs", per_class=2)
    bundle = load_predictor(Project.at(tmp_path / "other"), str(moved))
    assert bundle.classes == ["circle", "square", "stripes"] and set(bundle.members) == {"exp_a", "exp_b"}
    got = predict_images(bundle, paths, progress=False).probs
    make_experiment(project, "exp_a", folds=2, img_size=16, tta=("identity", "hflip"), seed=0)
    make_experiment(project, "exp_b", folds=1, img_size=12, tta=("identity",), seed=1)
    np.testing.assert_allclose(got, predict_images(load_predictor(project, "blend"), paths, progress=False).probs,
                               atol=1e-6)
    assert not list(moved.rglob("*.pt")) and len(list(moved.rglob("*.safetensors"))) == 3


def test_export_refuses_outside_the_project_and_over_other_folders(project, tmp_path):
    with pytest.raises(BundleError, match="inside the project"):
        export_bundle(project, "exp_a", tmp_path / "outside")
    (project.root / "notes").mkdir()
    (project.root / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle"):
        export_bundle(project, "exp_a", project.root / "notes")
    assert (project.root / "notes" / "mine.txt").exists()
    first = export_bundle(project, "exp_a", project.root / "export" / "a")
    again = export_bundle(project, "exp_a", project.root / "export" / "a")  # a bundle is replaced whole
    assert first == again and sorted(p.name for p in (project.root / "export").iterdir()) == ["a"]


def test_a_bundle_of_an_unknown_kind_or_missing_weights_is_refused(project):
    out = export_bundle(project, "exp_a", project.root / "export" / "a")
    meta = json.loads((out / "bundle.json").read_text())
    meta["members"][0]["kind"] = "embedding_head"
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="kind 'embedding_head'"):
        load_predictor(project, str(out))
    meta["members"][0]["kind"] = "cnn"
    meta["members"][0]["folds"][0]["weights"] = "../../models/exp_a/fold_0/best.pt"
    (out / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="missing from the bundle"):
        load_predictor(project, str(out))
