"""The pieces of a training recipe, built from a fold config: optimizer, lr schedule, loss, mixup, EMA.

`build_fit` puts them together into a `Fit` (everything one optimisation step touches, and everything
`last.pt` must restore); `train.train_one_epoch` steps it. Randomness is a function of
(seed, fold, epoch) only (`epoch_seed`), so a resumed run draws exactly what an uninterrupted one did.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from foldblend.config import ExperimentConfig
from foldblend.members.cnn.models import param_groups
from foldblend.members.infer import amp_dtype
from foldblend.members.transforms import class_sample_weights


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """A seed for (seed, fold, epoch); epoch -1 is the model's initialisation."""
    return int(np.random.SeedSequence([seed, fold, epoch + 1]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every device's generator, CUDA included


def make_optimizer(model, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _peak(group: dict) -> float:
    """A group's configured lr, also once a schedule has moved it (OneCycle keeps `max_lr`, timm `initial_lr`)."""
    return group.get("max_lr", group.get("initial_lr", group["lr"]))


def make_scheduler(optimizer, cfg: ExperimentConfig, updates_per_epoch: int, epochs: int | None = None):
    """Per-update schedule over `epochs` (default the config's): timm CosineLRScheduler with warmup, torch
    OneCycleLR, or None."""
    total = max(1, (cfg.epochs if epochs is None else epochs) * updates_per_epoch)
    warmup = min(int(round(cfg.warmup_epochs * updates_per_epoch)), total - 1)
    if cfg.scheduler == "onecycle":
        max_lr = [_peak(g) for g in optimizer.param_groups]
        # total + 1: the constructor takes one step, then one per update
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total + 1,
                                                   pct_start=min(max(warmup / total, 0.05), 0.95))
    if cfg.scheduler == "cosine":
        from timm.scheduler import CosineLRScheduler

        # timm's floors are absolute: take them below the smallest group's lr so that no group (a backbone
        # at lr * backbone_lr_mult) ever warms down or anneals up
        floor = 1e-2 * min(_peak(g) for g in optimizer.param_groups)
        # warmup_prefix: the cosine starts at the peak once warmup ends (else it jumps down mid-decay)
        sched = CosineLRScheduler(optimizer, t_initial=total - warmup, lr_min=floor, warmup_t=warmup,
                                  warmup_lr_init=floor, warmup_prefix=True, t_in_epochs=False)
        sched.step_update(0)
        return sched
    return None


def compress_schedule(fit: "Fit", cfg: ExperimentConfig, updates_per_epoch: int, epochs: int) -> None:
    """The schedule rebuilt to end after `epochs` (fewer than planned: a time limit), continuing from the
    updates already made: the cosine then anneals to its floor by the new last epoch."""
    fit.scheduler = make_scheduler(fit.optimizer, cfg, updates_per_epoch, epochs)
    if isinstance(fit.scheduler, torch.optim.lr_scheduler.LRScheduler):
        with warnings.catch_warnings():  # "step() before optimizer.step()": these steps replay past updates
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(fit.updates):  # a stateful schedule is walked to where training is
                fit.scheduler.step()
    elif fit.scheduler is not None:
        fit.scheduler.step_update(fit.updates)


def step_scheduler(scheduler, updates: int) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        scheduler.step()
    else:
        scheduler.step_update(updates)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy on soft (mixed, smoothed) targets, optionally class-weighted.

    Without weights it is timm's SoftTargetCrossEntropy; with weights each sample counts with the weight
    of its (mixed) target, normalised like nn.CrossEntropyLoss(weight=...) on hard targets.
    """

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
        if self.weight is None:
            return per_sample.mean()
        w = target @ self.weight
        return (per_sample * w).sum() / w.sum()


def make_loss(cfg: ExperimentConfig, labels: np.ndarray, n_classes: int, device) -> nn.Module:
    weight = None
    if cfg.class_weight != "none":
        weight = torch.tensor(class_sample_weights(labels, n_classes, cfg.class_weight), dtype=torch.float32,
                              device=device)
    if uses_mixup(cfg):  # soft targets; label smoothing is folded into them by Mixup
        return SoftTargetCrossEntropy(weight).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def uses_mixup(cfg: ExperimentConfig) -> bool:
    return (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mix_prob > 0


def make_mixup(cfg: ExperimentConfig, n_classes: int):
    if not uses_mixup(cfg):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                 label_smoothing=cfg.label_smoothing, num_classes=n_classes)


@dataclass
class Fit:
    """Everything one optimisation step touches; `state_dict()` is what a resume restores."""

    model: nn.Module
    run_model: nn.Module            # `model`, or torch.compile(model)
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler
    ema: object | None              # timm ModelEmaV3
    loss_fn: nn.Module
    mixup: object | None
    device: torch.device
    mean: tuple
    std: tuple
    n_classes: int
    amp: str = "off"
    channels_last: bool = False
    accumulate: int = 1
    clip_grad: float = 0.0
    label_smoothing: float = 0.0
    updates: int = 0

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.updates = state["updates"]


def updates_per_epoch(steps_per_epoch: int, accumulate: int) -> int:
    """An epoch's last, partial accumulation group also makes an update."""
    return max(1, math.ceil(steps_per_epoch / accumulate))


def build_fit(cfg: ExperimentConfig, model: nn.Module, train_labels: np.ndarray, n_classes: int,
              steps_per_epoch: int, device: torch.device, mean, std) -> Fit:
    """The optimizer, schedule, scaler, EMA, loss and mixup for `model` (already on `device`)."""
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, updates_per_epoch(steps_per_epoch, cfg.accumulate))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, cfg.amp) == torch.float16)
    return Fit(model=model, run_model=torch.compile(model) if cfg.compile else model, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, ema=ema, loss_fn=make_loss(cfg, train_labels, n_classes, device),
               mixup=make_mixup(cfg, n_classes), device=device, mean=tuple(mean), std=tuple(std),
               n_classes=n_classes, amp=cfg.amp, channels_last=channels_last, accumulate=cfg.accumulate,
               clip_grad=cfg.clip_grad, label_smoothing=cfg.label_smoothing)
