"""Assembling a member: every fold's predictions (models/<exp>/fold_<k>/preds.npz) into the contract.

`assemble_member` writes oof/<exp>/{oof.npz, test.npz, holdout.npz, scores.json} and scores every fold
and every view on its out-of-fold rows (the held-out split is scored only after the blend). Any member kind
whose folds write `preds.npz` is assembled the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foldblend.artifacts import save_member
from foldblend.metrics import classification_scores, softmax


@dataclass
class FoldPredictions:
    val_index: np.ndarray    # rows of folds.csv this fold held out
    val_logits: np.ndarray   # (V, n, C)
    test_logits: np.ndarray  # (V, M, C)
    views: list[str]
    holdout_logits: np.ndarray | None = None  # (V, H, C)


def load_fold_predictions(path: Path) -> FoldPredictions:
    with np.load(path, allow_pickle=False) as z:
        return FoldPredictions(z["val_index"], z["val_logits"], z["test_logits"], [str(v) for v in z["views"]],
                               z["holdout_logits"] if "holdout_logits" in z.files else None)


def log_prior(labels: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64) + 0.5
    return np.log(counts / counts.sum()).astype(np.float32)


def assemble_member(out_dir: Path, fold_preds: list[FoldPredictions], *, ids, labels, fold, classes,
                    test_ids, test_ok: np.ndarray, extra_scores: dict | None = None, holdout_ids=(),
                    holdout_labels=()) -> dict:
    """Write oof/<exp>/ from every fold's predictions; returns scores.json's content."""
    views = fold_preds[0].views
    n, c = len(ids), len(classes)
    oof = np.full((len(views), n, c), np.nan, dtype=np.float32)
    for fp in fold_preds:
        if fp.views != views:
            raise ValueError(f"{out_dir}: folds were predicted with different TTA views ({fp.views} vs {views})")
        oof[:, fp.val_index] = fp.val_logits
    missing = np.isnan(oof[0, :, 0])
    if missing.any():
        raise ValueError(f"{out_dir}: {int(missing.sum())} train images have no out-of-fold prediction "
                         f"(a fold is missing); train every fold before assembling")
    test = np.stack([fp.test_logits for fp in fold_preds]).astype(np.float32)
    if (~test_ok).any():  # unreadable test images: every model predicts the training prior
        test[:, :, ~test_ok] = log_prior(labels, c)
    h = len(holdout_ids)
    held = [fp.holdout_logits if fp.holdout_logits is not None or h else np.zeros((len(views), 0, c), np.float32)
            for fp in fold_preds]  # preds.npz written before holdouts existed: fine while there is none
    if any(x is None or x.shape[1] != h for x in held):
        raise ValueError(f"{out_dir}: a fold's predictions do not cover the {h} held-out images; predict it again")
    holdout = np.stack(held).astype(np.float32)
    scores = score_member(oof, labels, fold, views, c)
    scores.update(extra_scores or {})
    save_member(out_dir, classes=classes, ids=ids, labels=labels, fold=fold, views=views, oof_logits=oof,
                test_ids=test_ids, test_logits=test, scores=scores, holdout_ids=holdout_ids,
                holdout_labels=holdout_labels, holdout_logits=holdout)
    return scores


def score_member(oof_logits: np.ndarray, labels, fold, views: list[str], n_classes: int) -> dict:
    """OOF metrics overall (views averaged as probabilities), per fold and per view."""
    probs_views = softmax(oof_logits, axis=-1)
    probs = probs_views.mean(0)
    per_fold = {int(k): classification_scores(labels[fold == k], probs[fold == k], n_classes)
                for k in np.unique(fold)}
    per_view = {v: classification_scores(labels, probs_views[i], n_classes) for i, v in enumerate(views)}
    return {"overall": classification_scores(labels, probs, n_classes), "per_fold": per_fold,
            "per_view": per_view, "views": list(views), "n_images": int(len(labels))}
