"""A member kind is one file: a nearest-centroid classifier on downscaled raw pixels, defined and registered
here, goes through train -> oof/<exp>/ -> blend -> predict -> export -> evaluate with no change to the package.

The kind implements `members.base.MemberKind`: it trains a fold and returns its predictions (the runner
writes preds.npz, time.json and done.json), writes and loads its checkpoint, says what a bundle holds and
rebuilds a fold model from it, and costs itself for `foldblend init`. A fold config selects it with
`kind: centroid`; registering it (importing this module) is all `foldblend train` needs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from foldblend.artifacts import write_npz
from foldblend.cli import main
from foldblend.config import ConfigError, ExperimentConfig, KeyNotForKindError, load_config
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import list_images, predict_images
from foldblend.members.base import FoldResult, MemberKind, TrainData
from foldblend.members.infer import infer
from foldblend.members.loaders import eval_loader
from foldblend.members.registry import get_kind, register_kind
from foldblend.members.timing import ProbeSample, Timing
from foldblend.metrics import classification_scores, softmax
from foldblend.paths import Project
from foldblend.stages.evaluate import evaluate_folder

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Pooled(nn.Module):
    """Normalised images -> (B, 3 * grid * grid) average-pooled pixels."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float(), self.grid).flatten(1)


class Centroids(nn.Module):
    """Logits = minus the squared distance of the pooled pixels to each class's centroid."""

    def __init__(self, grid: int, n_classes: int):
        super().__init__()
        self.pool = Pooled(grid)
        self.register_buffer("centroids", torch.zeros(n_classes, 3 * grid * grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(self.pool(x), self.centroids).pow(2)


@register_kind("centroid")
class CentroidKind(MemberKind):
    checkpoint = "centroids.npz"
    trains_epochs = False
    grid = 4

    def check_config(self, cfg: ExperimentConfig, where: str, given: set[str]) -> None:
        if "epochs" in given:
            raise KeyNotForKindError(f"{where}: key 'epochs' does not apply to kind: centroid; remove it")

    def train_fold(self, cfg, k: int, data: TrainData, out_dir: Path, previous, progress: bool = True) -> FoldResult:
        out_dir.mkdir(parents=True, exist_ok=True)
        n_classes = len(data.classes)
        train_idx, val_idx = np.flatnonzero(data.fold != k), np.flatnonzero(data.fold == k)
        feats = infer(Pooled(self.grid), eval_loader(data.images, train_idx, 64), ["identity"], "cpu", MEAN, STD,
                      "off")[0]
        model = Centroids(self.grid, n_classes)
        y = data.labels[train_idx]
        model.centroids.copy_(torch.from_numpy(np.stack([feats[y == c].mean(0) for c in range(n_classes)])))
        meta = {"classes": list(data.classes), "img_size": cfg.img_size, "tta": list(cfg.tta), "mean": list(MEAN),
                "std": list(STD), "arch": {"grid": self.grid, "n_classes": n_classes}, "config": cfg.to_dict()}
        write_npz(out_dir / self.checkpoint, centroids=model.centroids.numpy(), meta=np.asarray(json.dumps(meta)))

        def logits(images):
            return infer(model, eval_loader(images, np.arange(len(images)), 64), cfg.tta, "cpu", MEAN, STD, cfg.amp,
                         n_classes=n_classes)

        val = logits(data.images[val_idx])
        score = classification_scores(data.labels[val_idx], softmax(val[0]), n_classes)["macro_f1"]
        return FoldResult(val_idx, val, logits(data.test_images), logits(data.holdout_images), list(cfg.tta),
                          best_epoch=0, best_macro_f1=score, weights="centroids")

    def load_fold(self, path: Path, device, shared: dict) -> tuple:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            model = self.rebuild_fold(meta, {"centroids": torch.from_numpy(z["centroids"])}, None, shared)
        return model.to(device).eval(), meta

    def rebuild_fold(self, fold: dict, tensors: dict, member_tensors, shared: dict):
        model = Centroids(fold["arch"]["grid"], fold["arch"]["n_classes"])
        model.load_state_dict(tensors)
        return model

    def time_fold(self, cfg, sample: ProbeSample, shared: dict) -> Timing:
        return Timing(infer_per_image=1e-5)

    def run_cost(self, values: dict, t: Timing, profile, epochs: int, paid: set) -> dict:
        views = len(values.get("tta", ["identity"]))
        return {"predict": (profile.n_train + profile.n_test + profile.n_holdout) * views * t.infer_per_image}


def run(root: Path, *args: str) -> None:
    assert main(["--root", str(root), *args]) == 0, f"foldblend {' '.join(args)} failed"


@pytest.fixture
def centroid_project(tiny_project: Path) -> Path:
    (tiny_project / "folds" / "tiny.yaml").unlink()  # only the new kind's member
    (tiny_project / "folds" / "centroid.yaml").write_text("kind: centroid\nimg_size: 16\ntta: [identity, hflip]\n")
    return tiny_project


def test_a_kind_defined_in_one_file_goes_from_train_to_evaluate(centroid_project: Path):
    root, project = centroid_project, Project.at(centroid_project)
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"]):
        run(root, *stage)

    # the runner wrote every fold's files, as for the built-in kinds
    for k in (0, 1):
        fold = project.model_dir("centroid", k)
        done = json.loads((fold / "done.json").read_text())
        assert done["checkpoint"] == "centroids.npz" and done["weights"] == "centroids" and done["fold"] == k
        assert {"train", "predict", "seconds"} <= set(json.loads((fold / "time.json").read_text()))
        with np.load(fold / "preds.npz") as z:
            assert list(z["views"]) == ["identity", "hflip"] and z["val_logits"].shape[0] == 2
    scores = json.loads((project.oof_dir("centroid") / "scores.json").read_text())
    assert scores["overall"]["macro_f1"] > 0.6  # class-coloured discs: centroids of pooled pixels separate them

    # a finished fold is skipped by the shared done-check
    stamps = [project.model_dir("centroid", k).joinpath("done.json").stat().st_mtime_ns for k in (0, 1)]
    run(root, "train", "--quiet")
    assert [project.model_dir("centroid", k).joinpath("done.json").stat().st_mtime_ns for k in (0, 1)] == stamps

    run(root, "blend")
    assert json.loads((project.oof / "_blend" / "blend.json").read_text())["members"] == ["centroid"]
    test_dir = root / "input" / "testset"
    run(root, "predict", "--images", str(test_dir), "--exp", "blend", "--device", "cpu")
    assert len((project.oof / "predict_blend.csv").read_text().splitlines()) == 1 + 9

    run(root, "export", "--exp", "blend")
    bundle = root / "export" / "blend"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert [m["kind"] for m in meta["members"]] == ["centroid"]
    assert sorted(p.name for p in (bundle / "weights" / "centroid").iterdir()) == ["fold_0.safetensors",
                                                                                   "fold_1.safetensors"]

    # the bundle predicts what the project predicts, and scores the labelled images like it
    paths = list_images([test_dir])
    from_bundle = predict_images(load_predictor(project, str(bundle)), paths, progress=False).probs
    from_project = predict_images(load_predictor(project, "blend"), paths, progress=False).probs
    np.testing.assert_allclose(from_bundle, from_project, atol=1e-6)
    run(root, "evaluate", "--data", str(root / "input" / "train"), "--exp", str(bundle), "--device", "cpu")
    ev = evaluate_folder(load_predictor(project, str(bundle)), root / "input" / "train", progress=False)
    assert ev.classes == ["class_0", "class_1", "class_2"] and ev.macro_f1 > 0.6


def test_the_kind_checks_its_keys_and_an_unknown_kind_is_named(tmp_path: Path):
    assert get_kind("centroid").name == "centroid"
    path = tmp_path / "c.yaml"
    path.write_text("kind: centroid\nepochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'epochs' does not apply to kind: centroid"):
        load_config(path)
    path.write_text("kind: centroids\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'kind' must be one of .*'centroid'.*got 'centroids'"):
        load_config(path)
