"""The embedding kind (`kind: embedding`): a head per fold on a frozen backbone's features, in `head.npz`.

A head refits in seconds, so current weights are fitted again rather than only re-predicted. A member's
folds share one backbone: loaded once, run once per view for all the heads when predicting, and written
once to a bundle (`backbone.safetensors`, next to each fold's head tensors; the head's scalars go to
bundle.json). The init probe times the backbone's forward pass (once per backbone and size, shared by
the heads on it) and one head fit; a run costs every image's features under every view once, then a
head fit per fold. The config's network keys are errors here (`config.check_embedding_keys`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from foldblend.config import ExperimentConfig, check_embedding_keys
from foldblend.members.base import FoldResult, MemberKind, TrainData
from foldblend.members.embedding.checkpoint import (
    CHECKPOINT,
    EmbeddingClassifier,
    load_head_checkpoint,
    logits_of_heads,
    share_one_backbone,
)
from foldblend.members.embedding.heads import fit_head, head_arrays, head_from_arrays
from foldblend.members.embedding.train import train_fold
from foldblend.members.features import FeatureSpec, extract, load_backbone
from foldblend.members.loaders import eval_loader
from foldblend.members.registry import register_kind
from foldblend.members.timing import ProbeSample, Timing


@register_kind("embedding")
class EmbeddingKind(MemberKind):
    checkpoint = CHECKPOINT
    trains_epochs = False
    retime = False

    def train_fold(self, cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, previous: dict | None,
                   progress: bool = True) -> FoldResult:
        return train_fold(cfg, k, data, out_dir, previous, progress)

    def check_config(self, cfg: ExperimentConfig, where: str, given: set[str]) -> None:
        check_embedding_keys(cfg, where, given)

    def claims(self, path: Path) -> bool:
        return path.suffix == ".npz" and path.name.startswith("head")

    def load_fold(self, path: Path, device, shared: dict) -> tuple:
        return load_head_checkpoint(path, device, shared)

    def member_logits(self, models: list, images: dict[int, np.ndarray], batch_size: int, device,
                      progress: bool) -> np.ndarray | None:
        """The frozen backbone run once for all the folds' heads (when they share it and its settings)."""
        first = models[0]
        if not share_one_backbone([fm.model for fm in models]) or any(
                (fm.views, fm.mean, fm.std, fm.amp, fm.img_size) != (first.views, first.mean, first.std, first.amp,
                                                                       first.img_size) for fm in models):
            return None
        images = images[first.img_size]
        loader = eval_loader(images, np.arange(len(images)), batch_size)
        return logits_of_heads([fm.model for fm in models], loader, first.views, device, first.mean, first.std,
                               first.amp, desc=first.name.rsplit("/", 1)[0] if progress else None)

    # ------------------------------------------------------------------ bundles

    def member_tensors(self, models: list) -> dict[str, dict]:
        return {"backbone": models[0].model.backbone.state_dict()}  # once: the folds differ only in their heads

    def fold_tensors(self, fm) -> dict:
        return fm.model.head.state_dict()

    def fold_settings(self, fm) -> dict:
        """The head's type and scalars (its tensors go to the fold's safetensors file)."""
        arrays = head_arrays(fm.model.head)
        return {"head": {key: np.asarray(v).item() for key, v in arrays.items() if np.asarray(v).ndim == 0}}

    def rebuild_fold(self, fold: dict, tensors: dict, member_tensors, shared: dict):
        if "backbone" not in shared:  # one frozen backbone object shared by the folds, as in the project
            # rebuilt from the bundle's own weights: no package of pretrained weights is needed
            backbone = load_backbone(FeatureSpec(fold["arch"]["model"], False, int(fold["img_size"])))[0]
            backbone.load_state_dict(member_tensors("backbone"))
            shared["backbone"] = backbone.eval().requires_grad_(False)
        arrays = {key: v.numpy() for key, v in tensors.items()}
        arrays |= {key: np.asarray(v) for key, v in fold["head"].items()}
        return EmbeddingClassifier(shared["backbone"], head_from_arrays(arrays))

    # ------------------------------------------------------------------ planning

    def time_fold(self, cfg: ExperimentConfig, sample: ProbeSample, shared: dict) -> Timing:
        """The backbone's forward pass (timed once per backbone and size) and one head fit."""
        key = (cfg.model, str(cfg.pretrained), cfg.img_size)
        if key not in shared:
            shared[key] = _time_backbone(cfg, sample.images, sample.device)
        setup, infer_s, dim = shared[key]
        return Timing(infer_per_image=infer_s, head_fit_per_image=_time_head(cfg, dim, sample), setup=setup)

    def run_cost(self, values: dict, t: Timing, profile, epochs: int, paid: set) -> dict:
        n, others = profile.n_train, profile.n_test + profile.n_holdout
        views = len(set(["identity", *values.get("tta", ["identity"])]))
        key = ("features", values["model"], str(values["pretrained"]), values["img_size"])
        parts = {}
        if key not in paid:
            paid.add(key)
            parts["features"] = t.setup + (n + others) * views * t.infer_per_image
        parts["heads"] = profile.n_folds * profile.fold_train * t.head_fit_per_image
        return parts


def _time_backbone(cfg: ExperimentConfig, images: np.ndarray, device) -> tuple[float, float, int]:
    """(setup seconds, seconds per image per view, feature dimension) of a frozen backbone."""
    t0 = time.perf_counter()
    backbone, mean, std = load_backbone(FeatureSpec(cfg.model, cfg.pretrained, cfg.img_size))
    setup = time.perf_counter() - t0
    b = cfg.batch_size
    extract(backbone, images[:b], ["identity"], mean, std, device, b, cfg.amp)  # warm-up
    n = min(len(images), 2 * b)
    t0 = time.perf_counter()
    feats = extract(backbone, images[:n], ["identity"], mean, std, device, b, cfg.amp)[0]
    return setup, (time.perf_counter() - t0) / n, int(feats.shape[1])


def _time_head(cfg: ExperimentConfig, dim: int, sample: ProbeSample) -> float:
    """Seconds per training image of one head fit. A fit grows with the images it fits on: timed on as
    many random features as a fold has, up to 2,000, and scaled linearly."""
    n = min(sample.fold_train, 2000)
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    t0 = time.perf_counter()
    fit_head(cfg.embed, x, np.arange(n) % sample.n_classes, sample.n_classes, cfg.class_weight, seed=0)
    return (time.perf_counter() - t0) / n
