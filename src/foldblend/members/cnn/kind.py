"""The cnn kind (`kind: cnn`, the default): a network fine-tuned per fold, its weights in `best.pt`.

Training resumes from `last.pt`; weights that are current only predict again (`train.train_fold`). A
bundle holds each fold's state dict and rebuilds the network from its `Arch`. The init probe times a
few real training steps and an inference pass; a run costs folds x epochs x training images, a
validation pass per epoch (two with EMA), the predictions under each TTA view and, under `test_stats`, a
pass over the test for its BatchNorm statistics.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from foldblend.config import ExperimentConfig
from foldblend.members.base import FoldResult, MemberKind, TrainData
from foldblend.members.cnn.models import Arch, create_model, load_checkpoint, normalisation
from foldblend.members.cnn.optim import build_fit
from foldblend.members.cnn.train import train_fold, train_one_epoch
from foldblend.members.infer import infer
from foldblend.members.loaders import eval_loader, train_loader
from foldblend.members.registry import register_kind
from foldblend.members.timing import PROBE_BATCHES, PROBE_ROUNDS, PROBE_SECONDS, ProbeSample, Timing, median_of_rounds


@register_kind("cnn")
class CnnKind(MemberKind):
    checkpoint = "best.pt"
    trains_epochs = True
    retime = True

    def train_fold(self, cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, previous: dict | None,
                   progress: bool = True) -> FoldResult:
        return train_fold(cfg, k, data, out_dir, previous, progress)

    def claims(self, path: Path) -> bool:
        return path.suffix == ".pt" and path.name != "last.pt"

    def load_fold(self, path: Path, device, shared: dict) -> tuple:
        return load_checkpoint(path, device)

    def rebuild_fold(self, fold: dict, tensors: dict, member_tensors, shared: dict):
        model = create_model(Arch(**fold["arch"]))
        model.load_state_dict(tensors)
        return model

    def time_fold(self, cfg: ExperimentConfig, sample: ProbeSample, shared: dict) -> Timing:
        """A few real training steps (augmentation, forward, backward, update), then inference, per image."""
        images, labels, n_classes, device = sample.images, sample.labels, sample.n_classes, sample.device
        t0 = time.perf_counter()
        model = create_model(Arch(cfg.model, n_classes, cfg.drop_rate, cfg.head_hidden, cfg.drop_path_rate),
                             cfg.pretrained).to(device)
        mean, std = normalisation(model)
        fit = build_fit(cfg, model, labels, n_classes, PROBE_BATCHES * PROBE_ROUNDS[1] + 1, device, mean, std)
        setup = time.perf_counter() - t0
        b = cfg.batch_size
        train_one_epoch(fit, train_loader(images, np.arange(b), labels[:b], cfg, n_classes, seed=0))  # warm-up
        index = np.arange(b, b * (PROBE_BATCHES + 1))

        def train_round(seed: int) -> float:
            stats = train_one_epoch(fit, train_loader(images, index, labels[index], cfg, n_classes, seed=seed))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return stats["seconds"] / max(stats["images"], 1)

        train_s = median_of_rounds(train_round)
        eval_index = np.arange(min(len(images), 2 * b))

        def infer_round(_: int) -> float:
            t0 = time.perf_counter()
            infer(fit.model, eval_loader(images, eval_index, 2 * b), ["identity"], device, mean, std, cfg.amp,
                  fit.channels_last, n_classes=n_classes)
            return (time.perf_counter() - t0) / len(eval_index)

        infer_s = median_of_rounds(infer_round, seconds=PROBE_SECONDS / 2)
        return Timing(train_per_image=train_s, infer_per_image=infer_s, setup=setup)

    def run_cost(self, values: dict, t: Timing, profile, epochs: int, paid: set) -> dict:
        k, n = profile.n_folds, profile.n_train
        others = profile.n_test + profile.n_holdout
        evals = 2 if values.get("ema") else 1
        views = len(values.get("tta", ["identity", "hflip"]))
        restat = profile.n_test if values.get("test_stats", "auto") is not False else 0  # the test BatchNorm pass
        return {"setup": k * t.setup,
                "train": k * epochs * profile.fold_train * t.train_per_image,
                "validate": epochs * n * evals * t.infer_per_image,
                "predict": ((n + k * others) * views + k * restat) * t.infer_per_image}
