"""What a member kind is given, what it returns, and the interface it implements.

A member kind is one class, registered under its `kind:` name with `members.registry.register_kind`
(the built-in ones: `members/cnn/kind.py`, `members/embedding/kind.py`). It provides:

- `train_fold(cfg, k, data, out_dir, previous, progress) -> FoldResult`: fit on every fold but `k`
  (resuming what it can), predict fold `k`, the test set and the held-out split under each TTA view, and
  return those logits with what the fold's `done.json` records (best epoch, its held-out macro-F1, which
  weights). It writes its own files (`checkpoint`, `config.yaml`, logs) into `out_dir`; the runner
  (`running.fold.run_fold`) does the rest for every kind alike: it skips a finished fold (by the
  signatures of `signatures`), removes `done.json` before calling the kind, and then writes
  `preds.npz`, `time.json` and, last, `done.json`. `previous` is the fold's old `done.json` when its
  weights are current (only the TTA views or the test images changed): a kind may then predict again
  without training.
- `checkpoint` (the fold's weights file name) and `load_fold(path, device, shared)`: the fold model
  (a torch module from normalised images to logits) and its settings (`classes`, `img_size`, `mean`,
  `std`, `tta`, `config`, `arch`), for `evaluate`, `predict` and `export`;
- for bundles: `fold_tensors`, `member_tensors`, `fold_settings` (what is written) and `rebuild_fold`
  (the fold model from them);
- for `foldblend init`: `time_fold` (the probe's per-image seconds, a `timing.Timing`), `run_cost`
  (seconds of a whole run, by part) and `trains_epochs`;
- `check_config(cfg, where, given)`: this kind's rules on the fold config's keys (run by `config.validate`).

Everything after the fold files is shared: `running` decides which folds are pending and where they
run, and `assemble.assemble_member` turns the folds' predictions into `oof/<exp>/` per the
ensemble-member contract (`artifacts.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from foldblend.config import ExperimentConfig
from foldblend.members.signatures import DEFAULT_CHECKPOINT
from foldblend.members.timing import ProbeSample, Timing


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


@dataclass
class FoldResult:
    """What `train_fold` returns: fold k's predictions (written to preds.npz) and its summary (done.json)."""

    val_index: np.ndarray       # (n,) rows of fold k in TrainData order
    val_logits: np.ndarray      # (V, n, C)
    test_logits: np.ndarray     # (V, M, C)
    holdout_logits: np.ndarray  # (V, H, C)
    views: list[str]            # the V TTA views, in order
    best_epoch: int             # the epoch kept (0 for a kind without epochs)
    best_macro_f1: float        # its macro-F1 on fold k
    weights: str                # which weights were kept (cnn: model | ema; embedding: the head)
    train_seconds: float = 0.0  # wall seconds spent fitting, resumed runs included (time.json)
    predict_seconds: float = 0.0


class MemberKind:
    """One kind of ensemble member. Subclass it, set `checkpoint`, implement `train_fold` and `load_fold`
    (and `rebuild_fold` for bundles, `time_fold`/`run_cost` for `foldblend init`), and register it."""

    name: str = ""               # set by register_kind: the fold config's `kind:` value
    checkpoint: str = DEFAULT_CHECKPOINT  # the fold's weights file in models/<exp>/fold_<k>/
    trains_epochs: bool = True   # `epochs` means something (a time budget may scale it)
    retime: bool = False         # the init probe times it twice, the faster pass counts (noisy timings)

    def train_fold(self, cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, previous: dict | None,
                   progress: bool = True) -> FoldResult:
        """Train (or resume) fold k into out_dir and return its predictions; `previous`: see the module doc."""
        raise NotImplementedError

    def check_config(self, cfg: ExperimentConfig, where: str, given: set[str]) -> None:
        """Raise config.KeyNotForKindError naming `where` for a key that does not apply to this kind (`--set` then
        skips it for this config), config.ConfigError for any other broken rule."""

    # ------------------------------------------------------------------ fold models

    def claims(self, path: Path) -> bool:
        """Whether a file (a fold folder's, or one copied out of the project) is one of this kind's checkpoints."""
        return path.name == self.checkpoint

    def load_fold(self, path: Path, device, shared: dict) -> tuple:
        """(torch module from normalised images to logits, settings: classes, img_size, mean, std, tta, config,
        arch). `shared` is one dict per experiment being loaded (e.g. a backbone its folds share)."""
        raise NotImplementedError

    def member_logits(self, models: list, images: dict[int, np.ndarray], batch_size: int, device,
                      progress: bool) -> np.ndarray | None:
        """(F, V, N, C) for a member's fold models (`inference.predictor.FoldModel`) when the kind predicts
        them together faster than one by one; None: one by one."""
        return None

    # ------------------------------------------------------------------ bundles

    @property
    def bundles(self) -> bool:
        return type(self).rebuild_fold is not MemberKind.rebuild_fold

    def member_tensors(self, models: list) -> dict[str, dict]:
        """{file stem: state dict} written once per member (next to the folds' files)."""
        return {}

    def fold_tensors(self, fm) -> dict:
        """The state dict of one fold model written to its safetensors file."""
        return fm.model.state_dict()

    def fold_settings(self, fm) -> dict:
        """Extra JSON fields of the fold's entry in bundle.json."""
        return {}

    def rebuild_fold(self, fold: dict, tensors: dict, member_tensors: Callable[[str], dict], shared: dict):
        """The fold model from its bundle.json entry and tensors; `member_tensors(stem)` reads a member-wide
        file, `shared` is one dict per member."""
        raise NotImplementedError

    # ------------------------------------------------------------------ planning

    def time_fold(self, cfg: ExperimentConfig, sample: ProbeSample, shared: dict) -> Timing:
        """Seconds per image of this candidate on this machine, measured on `sample`; `shared` is one
        dict per kind for the whole probe (e.g. a backbone's timing used by several heads)."""
        raise NotImplementedError

    def run_cost(self, values: dict, t: Timing, profile, epochs: int, paid: set) -> dict:
        """Seconds by part of every fold of a candidate (`values`: its config keys) at `epochs`, from its
        timing and `profile` (`n_folds`, `n_train`, `n_test`, `n_holdout`, `fold_train`). Work shared with
        other candidates is counted once: skip keys already in `paid`, add those it pays."""
        raise NotImplementedError
