"""Training one fold: `train_fold(cfg, k, data, out_dir)` is a plain function; the CLI is a shell around it.

Per fold it keeps the epoch (raw or EMA weights) with the best held-out macro-F1, writes
`best.pt` (weights + constructor args + classes), `last.pt` (everything needed to resume), `log.csv`
(one row per epoch), `config.yaml` (resolved) and, once the fold's predictions are written, `done.json`.
A rerun with the same resolved config and folds is a no-op; a changed config retrains; a killed run
resumes from its last completed epoch and ends with the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .artifacts import atomic_path, write_csv, write_json, write_npz, write_text
from .config import ExperimentConfig, dump_config
from .data import eval_loader, train_loader
from .metrics import classification_scores, softmax
from .models import Arch, checkpoint_payload, create_model, normalisation, param_groups, set_trainable
from .predict import amp_dtype, autocast, infer
from .transforms import class_sample_weights, to_input


@dataclass
class TrainData:
    """What every fold of an experiment trains and predicts on (images already decoded and resized)."""

    images: np.ndarray        # (N, S, S, 3) uint8, folds.csv order
    labels: np.ndarray        # (N,) class index
    fold: np.ndarray          # (N,)
    classes: list[str]
    test_images: np.ndarray   # (M, S, S, 3) uint8, sample order
    fingerprint: str          # of folds.csv and the test ids: what changes what a fold sees
    ids: np.ndarray           # (N,) train image ids (folds.csv `image`)
    test_ids: np.ndarray      # (M,) sample-submission ids
    test_ok: np.ndarray       # (M,) False where the test image is missing or unreadable


def resolve_device(name: str, fold: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is available (set device: auto or cpu)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fold_signature(cfg: ExperimentConfig, data: TrainData) -> dict:
    return {"config": cfg.fingerprint(), "data": data.fingerprint}


def is_fold_done(out_dir: Path, signature: dict) -> bool:
    done = out_dir / "done.json"
    if not (done.exists() and (out_dir / "preds.npz").exists()):
        return False
    return json.loads(done.read_text()).get("signature") == signature


# ----------------------------------------------------------------------------- pieces of the recipe


def make_optimizer(model, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer, cfg: ExperimentConfig, updates_per_epoch: int):
    """Stepped once per optimiser update; returns (scheduler, step_fn(updates))."""
    total = max(1, cfg.epochs * updates_per_epoch)
    warmup = int(round(cfg.warmup_epochs * updates_per_epoch))
    if cfg.scheduler == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total + 1,
                                                    pct_start=max(warmup / total, 0.05))
        return sched, lambda updates: sched.step()
    if cfg.scheduler == "cosine":
        from timm.scheduler import CosineLRScheduler

        sched = CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg.lr * 1e-2, warmup_t=warmup,
                                  warmup_lr_init=cfg.lr * 1e-2, t_in_epochs=False)
        sched.step_update(0)
        return sched, lambda updates: sched.step_update(updates)
    return None, lambda updates: None


def make_loss(cfg: ExperimentConfig, labels: np.ndarray, n_classes: int, device) -> nn.Module:
    weight = None
    if cfg.class_weight != "none":
        weight = torch.tensor(class_sample_weights(labels, n_classes, cfg.class_weight), dtype=torch.float32,
                              device=device)
    if cfg.mixup > 0 or cfg.cutmix > 0:  # soft targets; label smoothing is folded into them by Mixup
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def make_mixup(cfg: ExperimentConfig, n_classes: int):
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                 label_smoothing=cfg.label_smoothing, num_classes=n_classes)


def freeze_for_epoch(model, cfg: ExperimentConfig, epoch: int) -> None:
    set_trainable(model, cfg.freeze.train if epoch < cfg.freeze.epochs else None)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A frozen BatchNorm must not drift: its running statistics stay those it was loaded with."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


# ----------------------------------------------------------------------------- one fold


def train_fold(cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, progress: bool = True) -> dict:
    """Train fold k (held-out = data.fold == k), predict its held-out images and the test set."""
    out_dir = Path(out_dir)
    signature = fold_signature(cfg, data)
    if is_fold_done(out_dir, signature):
        return json.loads((out_dir / "done.json").read_text())
    last_path = out_dir / "last.pt"
    resume = None
    if last_path.exists():
        resume = torch.load(last_path, map_location="cpu", weights_only=False)
        if resume.get("signature") != signature:
            resume = None
    if resume is None and out_dir.exists():
        shutil.rmtree(out_dir)  # a changed config or folds: start this fold afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))

    device = resolve_device(cfg.device, k)
    n_classes = len(data.classes)
    train_idx = np.flatnonzero(data.fold != k)
    val_idx = np.flatnonzero(data.fold == k)
    y_train, y_val = data.labels[train_idx], data.labels[val_idx]

    seed_everything(cfg.seed + k)  # identical initial weights for a fold, resumed or not
    arch = Arch(cfg.model, n_classes, cfg.drop_rate, cfg.head_hidden)
    model = create_model(arch, cfg.pretrained).to(device)
    mean, std = normalisation(model)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(train_loader(data.images, train_idx, y_train, cfg, n_classes, 0))
    updates_per_epoch = max(1, steps_per_epoch // cfg.accumulate)
    scheduler, step_scheduler = make_scheduler(optimizer, cfg, updates_per_epoch)
    dtype = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = make_loss(cfg, y_train, n_classes, device)
    mixup = make_mixup(cfg, n_classes)
    run_model = torch.compile(model) if cfg.compile else model

    start_epoch, updates, best, rows, stale = 0, 0, {"score": -1.0, "epoch": -1}, [], 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        start_epoch, updates, best, rows, stale = (resume["epoch"] + 1, resume["updates"], resume["best"],
                                                   resume["rows"], resume["stale"])
        print(f"[{cfg.name} fold {k}] resuming after epoch {start_epoch - 1}")

    eval_bs = cfg.batch_size * 2
    val_dl = eval_loader(data.images, val_idx, eval_bs, cfg.num_workers)
    for epoch in range(start_epoch, cfg.epochs):
        seed_everything(cfg.seed * 1000 + epoch)
        freeze_for_epoch(model, cfg, epoch)
        loader = train_loader(data.images, train_idx, y_train, cfg, n_classes, epoch,
                              pin_memory=device.type == "cuda")
        model.train()
        keep_frozen_norms_in_eval(model)
        t0, data_time, seen, loss_sum = time.perf_counter(), 0.0, 0, 0.0
        bar = tqdm(loader, desc=f"{cfg.name} fold {k} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress)
        t_data = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for step, (batch, target) in enumerate(bar):
            x = to_input(batch, mean, std, device, channels_last)
            target = target.to(device, non_blocking=True)
            data_time += time.perf_counter() - t_data
            if mixup is not None and len(x) % 2 == 0:
                x, target_used = mixup(x, target)
            elif mixup is not None:  # Mixup needs an even batch; fall back to one-hot soft targets
                target_used = nn.functional.one_hot(target, n_classes).float()
            else:
                target_used = target
            with autocast(device, cfg.amp):
                loss = loss_fn(run_model(x), target_used)
            scaler.scale(loss / cfg.accumulate).backward()
            if (step + 1) % cfg.accumulate == 0 or step + 1 == len(loader):
                if cfg.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                updates += 1
                step_scheduler(updates)
                if ema is not None:
                    ema.update(model, step=updates)
            seen += len(x)
            loss_sum += loss.item() * len(x)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            t_data = time.perf_counter()
        train_seconds = time.perf_counter() - t0

        candidates = {"model": model} | ({"ema": ema.module} if ema is not None else {})
        results = {}
        for tag, net in candidates.items():
            logits = infer(net, val_dl, ["identity"], device, mean, std, cfg.amp, channels_last)[0]
            results[tag] = classification_scores(y_val, softmax(logits), n_classes)
        tag = max(results, key=lambda t: results[t]["macro_f1"])
        score = results[tag]
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "val_loss": score["log_loss"],
               "val_macro_f1": score["macro_f1"], "val_accuracy": score["accuracy"],
               "lr": optimizer.param_groups[0]["lr"], "weights": tag,
               "seconds": time.perf_counter() - t0, "data_seconds": data_time, "train_seconds": train_seconds}
        if ema is not None:
            row["raw_macro_f1"], row["ema_macro_f1"] = results["model"]["macro_f1"], results["ema"]["macro_f1"]
        rows.append(row)
        write_csv(out_dir / "log.csv", pd.DataFrame(rows))
        if score["macro_f1"] > best["score"]:
            best, stale = {"score": score["macro_f1"], "epoch": epoch + 1, "weights": tag}, 0
            with atomic_path(out_dir / "best.pt") as tmp:
                torch.save(checkpoint_payload(candidates[tag], arch, data.classes, cfg.img_size, cfg.tta,
                                              mean, std, config=cfg.to_dict(), fold=k, epoch=epoch + 1), tmp)
        else:
            stale += 1
        if progress:
            print(f"[{cfg.name} fold {k}] epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                  f"val macro-F1 {score['macro_f1']:.4f} acc {score['accuracy']:.4f} ({tag}) "
                  f"{row['seconds']:.1f}s")
        stop = cfg.patience > 0 and stale >= cfg.patience
        with atomic_path(last_path) as tmp:
            torch.save({"signature": signature, "epoch": epoch, "updates": updates, "best": best, "rows": rows,
                        "stale": stale, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                        "stopped_early": stop}, tmp)
        if stop:
            print(f"[{cfg.name} fold {k}] early stop: no gain in {cfg.patience} epochs")
            break

    return predict_fold(cfg, k, data, out_dir, signature, best, device, val_idx, progress)


def predict_fold(cfg, k, data: TrainData, out_dir: Path, signature, best, device, val_idx, progress) -> dict:
    """The best checkpoint on its held-out fold and on the test set, under every TTA view."""
    from .models import load_checkpoint

    model, ckpt = load_checkpoint(out_dir / "best.pt", device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    bs = cfg.batch_size * 2
    desc = f"{cfg.name} fold {k} predict" if progress else None
    val_logits = infer(model, eval_loader(data.images, val_idx, bs, cfg.num_workers), cfg.tta, device,
                       ckpt["mean"], ckpt["std"], cfg.amp, channels_last, desc)
    test_logits = infer(model, eval_loader(data.test_images, np.arange(len(data.test_images)), bs,
                                           cfg.num_workers), cfg.tta, device, ckpt["mean"], ckpt["std"],
                        cfg.amp, channels_last, desc)
    write_npz(out_dir / "preds.npz", val_index=val_idx, val_logits=val_logits, test_logits=test_logits,
              views=np.asarray(cfg.tta))
    summary = {"signature": signature, "fold": k, "best_epoch": best["epoch"], "best_macro_f1": best["score"],
               "weights": best.get("weights", "model")}
    write_json(out_dir / "done.json", summary)
    return summary
