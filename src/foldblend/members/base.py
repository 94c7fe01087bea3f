"""What a member kind is given, and the one thing it must do.

A member kind trains one fold at a time: `train_fold(cfg, k, data, out_dir)` fits on every fold but
`k`, predicts fold `k`, the test set and the held-out split under each TTA view, and writes `out_dir/preds.npz`
(`val_index`, `val_logits` (V, n, C), `test_logits` (V, M, C), `holdout_logits` (V, H, C), `views`) and
`out_dir/done.json`
(with the signatures of `running.signatures`). Everything after that is shared: `running` decides
which folds are pending and where they run, and `assemble.assemble_member` turns the folds'
predictions into `oof/<exp>/` per the ensemble-member contract (`artifacts.py`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from foldblend.config import ExperimentConfig


@dataclass
class TrainData:
    """What every fold of an experiment trains and predicts on (images already decoded and resized)."""

    images: np.ndarray        # (N, S, S, 3) uint8, folds.csv order
    labels: np.ndarray        # (N,) class index
    fold: np.ndarray          # (N,)
    classes: list[str]
    test_images: np.ndarray   # (M, S, S, 3) uint8, sample order
    fingerprint: str          # of folds.csv and the class order: what changes what a fold's weights learn
    ids: np.ndarray           # (N,) train image ids (folds.csv `image`)
    test_ids: np.ndarray      # (M,) sample-submission ids
    test_ok: np.ndarray       # (M,) False where the test image is missing or unreadable
    test_fingerprint: str = ""  # of the test ids, files (path, size, mtime) and readability
    feature_cache: Path | None = None  # where frozen-backbone features are cached (None: not on disk)
    # the held-out test split (folds.csv fold -1): predicted like test images, never trained or chosen on
    holdout_images: np.ndarray | None = None  # (H, S, S, 3) uint8; None = no held-out rows
    holdout_ids: np.ndarray | None = None     # (H,) folds.csv `image`
    holdout_labels: np.ndarray | None = None  # (H,) class index

    def __post_init__(self):
        if self.holdout_images is None:  # one representation: H = 0 rows, like M = 0 for a train-only task
            size = self.images.shape[1:] if self.images.ndim == 4 else (0, 0, 3)
            self.holdout_images = np.zeros((0, *size), np.uint8)
            self.holdout_ids = np.empty(0, str)
            self.holdout_labels = np.empty(0, np.int64)


class MemberKind(Protocol):
    """One kind of ensemble member: a module with this function (`cnn.train`, `embedding.train`)."""

    def train_fold(self, cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path,
                   progress: bool = True) -> dict:
        """Train (or resume) fold k and write out_dir/preds.npz and out_dir/done.json; returns done.json."""
        ...


KINDS = {"cnn": ".cnn.train", "embedding": ".embedding.train"}  # kind -> the module implementing MemberKind


def member_kind(cfg: ExperimentConfig) -> MemberKind:
    """The module that trains `cfg`'s folds (imported on demand: a kind's dependencies load only when used)."""
    return importlib.import_module(KINDS[cfg.kind], __package__)
