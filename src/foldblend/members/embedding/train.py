"""One fold of an embedding member: `train_fold(cfg, k, data, out_dir)`, the kind's `MemberKind.train_fold`.

The frozen backbone's features of every train and test image come from the feature cache (extracted by
the first fold that needs them, under the identity view and every TTA view); the head is fitted on the
identity-view features of the other folds, then predicts fold k, the test set and the held-out
rows under each view. A linear head predicts the test (and the held-out rows, as `foldblend predict` would)
with the test's own feature statistics (`heads.fit_heads`, `test_stats`); fold k with the training
rows'.
Seconds per fold once the features exist. Writes `head.npz` (the fold's checkpoint) and `config.yaml`, and
returns the predictions (the runner writes `preds.npz`, `time.json` and, last, `done.json`, as for every kind).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from foldblend.artifacts import write_text
from foldblend.config import ExperimentConfig, dump_config
from foldblend.members.base import FoldResult, TrainData
from foldblend.members.embedding.checkpoint import CHECKPOINT, save_head_checkpoint
from foldblend.members.embedding.heads import fit_heads, head_logits
from foldblend.members.features import FeatureSpec, features_of, normalisation_of
from foldblend.members.infer import resolve_device
from foldblend.metrics import classification_scores, softmax


def member_features(cfg: ExperimentConfig, data: TrainData, progress: bool = True) -> tuple[dict, dict, dict]:
    """{view: features} of the train (N, D), test (M, D) and held-out (H, D) images, for identity and every
    TTA view."""
    spec = FeatureSpec(cfg.model, cfg.pretrained, cfg.img_size)
    views = list(dict.fromkeys(["identity", *cfg.tta]))
    device = resolve_device(cfg.device)
    common = dict(device=device, batch_size=cfg.batch_size, amp=cfg.amp, progress=progress)
    train = features_of(data.images, spec, views, data.feature_cache, what="train", **common)
    test = features_of(data.test_images, spec, views, data.feature_cache, what="test", **common)
    if len(data.holdout_images):
        holdout = features_of(data.holdout_images, spec, views, data.feature_cache, what="holdout", **common)
    else:  # no held-out split: nothing to extract or cache
        holdout = {v: np.zeros((0, train[v].shape[1]), np.float32) for v in views}
    return train, test, holdout


def train_fold(cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, previous: dict | None = None,
               progress: bool = True) -> FoldResult:
    """Fit the head on every fold but k; predict fold k and the test set under every TTA view. A head refits
    in seconds: current weights (`previous`) are fitted again rather than reloaded."""
    out_dir = Path(out_dir)
    started = time.perf_counter()  # features included: the fold that extracts them pays for them
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))
    train_feats, test_feats, holdout_feats = member_features(cfg, data, progress)

    t0 = time.perf_counter()
    train_idx, val_idx = np.flatnonzero(data.fold != k), np.flatnonzero(data.fold == k)
    n_classes = len(data.classes)
    head, test_head = fit_heads(cfg.embed, train_feats["identity"][train_idx], data.labels[train_idx], n_classes,
                                cfg.class_weight, seed=cfg.seed + k,
                                test_feats=test_feats["identity"] if cfg.test_stats is True else None)
    mean, std = normalisation_of(FeatureSpec(cfg.model, cfg.pretrained, cfg.img_size))
    meta = {"kind": "embedding", "head": cfg.embed.head, "model": cfg.model, "pretrained": cfg.pretrained,
            "img_size": cfg.img_size, "classes": list(data.classes), "tta": list(cfg.tta), "amp": cfg.amp,
            "mean": list(mean), "std": list(std), "feature_dim": int(train_feats["identity"].shape[1]),
            "fold": k, "config": cfg.to_dict(), "test_stats": test_head is not head}
    # the checkpoint is the test's head: what `foldblend predict`, bundles and the app run on new images
    save_head_checkpoint(out_dir / CHECKPOINT, test_head, meta)
    val_logits = np.stack([head_logits(head, train_feats[v][val_idx]) for v in cfg.tta])
    test_logits = np.stack([head_logits(test_head, test_feats[v]) for v in cfg.tta])
    # predicted like the test (as `foldblend predict` would), never fitted on
    holdout_logits = np.stack([head_logits(test_head, holdout_feats[v]) for v in cfg.tta])
    score = classification_scores(data.labels[val_idx], softmax(val_logits[0]), n_classes)
    if progress:
        print(f"[{cfg.name} fold {k}] {cfg.embed.head} head on {len(train_idx)} images: val macro-F1 "
              f"{score['macro_f1']:.4f} acc {score['accuracy']:.4f} ({time.perf_counter() - t0:.1f}s)")
    return FoldResult(val_idx, val_logits, test_logits, holdout_logits, list(cfg.tta), 0, score["macro_f1"],
                      cfg.embed.head, time.perf_counter() - started)

