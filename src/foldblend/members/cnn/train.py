"""Training one fold: `train_fold(cfg, k, data, out_dir, previous)`, the cnn kind's `MemberKind.train_fold`.

Per fold it keeps the epoch (raw or EMA weights) with the best held-out macro-F1, writes
`best.pt` (weights + constructor args + classes), `last.pt` (everything needed to resume), `log.csv`
(one row per epoch) and `config.yaml` (resolved), and returns the fold's predictions (the runner,
`running.fold.run_fold`, writes preds.npz, time.json and done.json, and skips a finished fold).
Weights that are current (`previous`) only predict again; a changed config retrains; a killed run
(SIGKILL included) resumes from its last completed epoch and, on CPU, ends with the same numbers as an
uninterrupted one: every random draw of an epoch is a function of (seed, fold, epoch) (`recipe.epoch_seed`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from foldblend.artifacts import write_csv, write_text, write_torch
from foldblend.config import ExperimentConfig, dump_config
from foldblend.members.base import FoldResult, TrainData
from foldblend.members.cnn.models import (
    Arch,
    check_parts,
    checkpoint_payload,
    create_model,
    load_checkpoint,
    normalisation,
    set_trainable,
)
from foldblend.members.cnn.optim import (
    Fit,
    build_fit,
    compress_schedule,
    epoch_seed,
    seed_everything,
    step_scheduler,
    updates_per_epoch,
)
from foldblend.members.gate import current_gate
from foldblend.members.infer import apply_test_state, autocast, infer, resolve_device, test_batchnorm
from foldblend.members.loaders import eval_loader, train_loader, train_steps
from foldblend.members.signatures import fold_seconds, fold_signature
from foldblend.members.transforms import to_input
from foldblend.metrics import classification_scores, softmax
from foldblend.safety import remove


def freeze_for_epoch(model, cfg: ExperimentConfig, epoch: int) -> None:
    set_trainable(model, cfg.freeze.train if epoch < cfg.freeze.epochs else None)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """A frozen BatchNorm must not drift: its running statistics stay those it was loaded with."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


# ----------------------------------------------------------------------------- one epoch


def _mix(fit: Fit, x: torch.Tensor, target: torch.Tensor):
    """(inputs, targets for the loss): mixed with soft targets when mixup/cutmix is on."""
    if fit.mixup is None:
        return x, target
    if len(x) % 2 == 0:
        return fit.mixup(x, target)
    from timm.data.mixup import (
        mixup_target,  # timm's Mixup needs an even batch: this one is left unmixed
    )

    return x, mixup_target(target, fit.n_classes, smoothing=fit.label_smoothing)


def _optimizer_step(fit: Fit) -> None:
    if fit.clip_grad > 0:
        fit.scaler.unscale_(fit.optimizer)
        nn.utils.clip_grad_norm_(fit.model.parameters(), fit.clip_grad)
    fit.scaler.step(fit.optimizer)
    fit.scaler.update()
    fit.optimizer.zero_grad(set_to_none=True)
    fit.updates += 1
    step_scheduler(fit.scheduler, fit.updates)
    if fit.ema is not None:
        fit.ema.update(fit.model, step=fit.updates)


def train_one_epoch(fit: Fit, loader, desc: str | None = None) -> dict:
    """One pass over `loader`: {loss (mean per image), images, seconds, data_seconds}.

    The loss is summed on the device and read once at the end: no host sync per step.
    """
    fit.model.train()
    keep_frozen_norms_in_eval(fit.model)
    steps = len(loader)
    loss_sum = torch.zeros((), device=fit.device)
    seen, data_seconds = 0, 0.0
    bar = tqdm(loader, desc=desc, leave=False, disable=desc is None, mininterval=1.0)
    fit.optimizer.zero_grad(set_to_none=True)
    t0 = t_data = time.perf_counter()
    for step, (batch, target) in enumerate(bar):
        x = to_input(batch, fit.mean, fit.std, fit.device, fit.channels_last)
        target = target.to(fit.device, non_blocking=True)
        data_seconds += time.perf_counter() - t_data
        x, target_used = _mix(fit, x, target)
        group_start = step - step % fit.accumulate
        group_size = min(fit.accumulate, steps - group_start)  # an epoch's last group may be short
        with autocast(fit.device, fit.amp):
            loss = fit.loss_fn(fit.run_model(x), target_used)
        fit.scaler.scale(loss / group_size).backward()
        if step + 1 == group_start + group_size:
            _optimizer_step(fit)
        loss_sum += loss.detach().float() * len(x)
        seen += len(x)
        if desc is not None and step % 25 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        t_data = time.perf_counter()
    return {"loss": loss_sum.item() / max(seen, 1), "images": seen, "seconds": time.perf_counter() - t0,
            "data_seconds": data_seconds}


def evaluate(net: nn.Module, loader, fit: Fit, y_val: np.ndarray) -> dict:
    logits = infer(net, loader, ["identity"], fit.device, fit.mean, fit.std, fit.amp, fit.channels_last)[0]
    return classification_scores(y_val, softmax(logits), fit.n_classes)


# ----------------------------------------------------------------------------- one fold


def _load_resume(path: Path, signature: dict) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if state.get("signature") == signature else None


def train_fold(cfg: ExperimentConfig, k: int, data: TrainData, out_dir: Path, previous: dict | None = None,
               progress: bool = True) -> FoldResult:
    """Train fold k (held-out = data.fold == k), predict its held-out images and the test set.

    `previous`: the fold's done.json when its weights are current; best.pt then only predicts again."""
    out_dir = Path(out_dir)
    signature = fold_signature(cfg, data)
    if previous is not None:  # the weights are current: only the predictions are not
        best = {"epoch": previous["best_epoch"], "score": previous["best_macro_f1"], "weights": previous["weights"]}
        return predict_fold(cfg, k, data, out_dir, best, resolve_device(cfg.device), np.flatnonzero(data.fold == k),
                            progress, fold_seconds(out_dir).get("train", 0.0))
    started = time.perf_counter()  # wall time spent on this fold is recorded (the summary reports it)
    last_path = out_dir / "last.pt"
    resume = _load_resume(last_path, signature)
    if resume is None and out_dir.exists():
        remove(out_dir, inside=out_dir.parent)  # a changed config or folds, or killed before one epoch: start afresh
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "config.yaml", dump_config(cfg))

    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # exact reruns are promised on CPU only
    n_classes = len(data.classes)
    train_idx = np.flatnonzero(data.fold != k)
    val_idx = np.flatnonzero(data.fold == k)
    y_train, y_val = data.labels[train_idx], data.labels[val_idx]

    seed_everything(epoch_seed(cfg.seed, k, -1))  # identical initial weights for a fold, resumed or not
    arch = Arch(cfg.model, n_classes, cfg.drop_rate, cfg.head_hidden, cfg.drop_path_rate)
    model = create_model(arch, cfg.pretrained).to(device)
    check_parts(model, cfg.freeze.train)
    mean, std = normalisation(model)
    steps = train_steps(len(train_idx), cfg.batch_size)
    fit = build_fit(cfg, model, y_train, n_classes, steps, device, mean, std)

    # "epochs": what this fold trains in all; a time limit's gate (members.gate) may lower it as it goes
    run = {"epoch": -1, "best": {"score": -1.0, "epoch": -1, "weights": "model"}, "rows": [], "stale": 0,
           "stopped_early": False, "epochs": cfg.epochs}
    if resume is not None:
        fit.load_state_dict(resume["fit"])
        run = {"epochs": cfg.epochs} | resume["run"]
        if run["epochs"] < cfg.epochs:  # shortened before the interruption: the same compressed schedule
            compress_schedule(fit, cfg, updates_per_epoch(steps, cfg.accumulate), run["epochs"])
        started -= run.get("seconds", 0.0)  # earlier runs' time counts too
        if progress:
            print(f"[{cfg.name} fold {k}] resuming after epoch {run['epoch'] + 1}")

    gate = current_gate()
    if gate is not None and resume is not None and not run["stopped_early"]:  # resumed under a time limit
        allowed = min(run["epochs"], gate(run["epoch"] + 1, run["epochs"], None, run["best"]["score"]))
        if allowed < run["epochs"]:  # at or below the epochs done: no more training
            _end_after(allowed, run, fit, cfg, steps)
    val_dl = eval_loader(data.images, val_idx, cfg.batch_size * 2, cfg.num_workers)
    for epoch in range(run["epoch"] + 1, cfg.epochs):
        if run["stopped_early"] or epoch >= run["epochs"]:
            break
        epoch_started = time.perf_counter()
        seed = epoch_seed(cfg.seed, k, epoch)
        seed_everything(seed)  # dropout, mixup: the same draws whether or not the run was resumed
        freeze_for_epoch(fit.model, cfg, epoch)
        loader = train_loader(data.images, train_idx, y_train, cfg, n_classes, seed, pin_memory=device.type == "cuda")
        desc = f"{cfg.name} fold {k} epoch {epoch + 1}/{run['epochs']}" if progress else None
        stats = train_one_epoch(fit, loader, desc)

        candidates = {"model": fit.model} | ({"ema": fit.ema.module} if fit.ema is not None else {})
        results = {tag: evaluate(net, val_dl, fit, y_val) for tag, net in candidates.items()}
        if cfg.select == "best":
            tag = max(results, key=lambda t: results[t]["macro_f1"])
        else:  # no choice made on the held-out fold: its OOF predictions stay unbiased
            tag = "ema" if fit.ema is not None else "model"
        score = results[tag]
        row = {"epoch": epoch + 1, "train_loss": stats["loss"], "val_loss": score["log_loss"],
               "val_macro_f1": score["macro_f1"], "val_accuracy": score["accuracy"],
               "lr": max(g["lr"] for g in fit.optimizer.param_groups), "weights": tag,
               "train_seconds": stats["seconds"], "data_seconds": stats["data_seconds"]}
        if fit.ema is not None:
            row["raw_macro_f1"], row["ema_macro_f1"] = results["model"]["macro_f1"], results["ema"]["macro_f1"]
        run["rows"].append(row)
        write_csv(out_dir / "log.csv", pd.DataFrame(run["rows"]))
        if cfg.select == "last" or score["macro_f1"] > run["best"]["score"]:
            run["best"], run["stale"] = {"score": score["macro_f1"], "epoch": epoch + 1, "weights": tag}, 0
            write_torch(out_dir / "best.pt", checkpoint_payload(candidates[tag], arch, data.classes, cfg.img_size,
                                                                cfg.tta, mean, std, config=cfg.to_dict(), fold=k,
                                                                epoch=epoch + 1))
        else:
            run["stale"] += 1
        run["epoch"] = epoch
        run["seconds"] = time.perf_counter() - started
        run["stopped_early"] = cfg.patience > 0 and run["stale"] >= cfg.patience
        if progress:
            print(f"[{cfg.name} fold {k}] epoch {epoch + 1}/{run['epochs']} loss {row['train_loss']:.4f} "
                  f"val macro-F1 {score['macro_f1']:.4f} acc {score['accuracy']:.4f} ({tag}) "
                  f"{stats['seconds']:.1f}s")
            if run["stopped_early"]:
                print(f"[{cfg.name} fold {k}] early stop: no gain in {cfg.patience} epochs")
        # last: written after best.pt and log.csv, so a kill between them only repeats this epoch
        write_torch(last_path, {"signature": signature, "run": run, "fit": fit.state_dict()})
        if gate is not None and not run["stopped_early"]:  # a time limit: go on, shorten, or pause (raises)
            allowed = max(epoch + 1, min(run["epochs"], gate(epoch + 1, run["epochs"],
                                                             time.perf_counter() - epoch_started, score["macro_f1"])))
            if allowed < run["epochs"]:
                if progress:
                    print(f"[{cfg.name} fold {k}] time limit: {allowed} epochs instead of {run['epochs']} "
                          f"(the learning-rate schedule now ends there)")
                _end_after(allowed, run, fit, cfg, steps)
                write_torch(last_path, {"signature": signature, "run": run, "fit": fit.state_dict()})

    return predict_fold(cfg, k, data, out_dir, run["best"], device, val_idx, progress, time.perf_counter() - started)


def _end_after(allowed: int, run: dict, fit: Fit, cfg: ExperimentConfig, steps: int) -> None:
    """The fold ends after `allowed` epochs (a time limit's gate), never fewer than it has done; its schedule
    is compressed to end there when epochs are left to train."""
    done = run["epoch"] + 1
    run["epochs"] = max(allowed, done)
    if allowed > done:
        compress_schedule(fit, cfg, updates_per_epoch(steps, cfg.accumulate), allowed)


def _record_prediction_settings(path: Path, cfg: ExperimentConfig, test_state: dict | None) -> None:
    """Keep best.pt's TTA views, amp and test BatchNorm statistics those it last predicted with: a
    checkpoint copied out of the project (without done.json) then still predicts exactly as its member in
    oof/ did."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("config") or {}
    old = ckpt.get("test_state")
    same_state = (old is None) == (test_state is None) and (
        test_state is None or (old.keys() == test_state.keys() and all(torch.equal(old[k], test_state[k])
                                                                        for k in test_state)))
    if ckpt.get("tta") == list(cfg.tta) and config.get("amp") == cfg.amp and same_state:
        return
    ckpt["tta"], ckpt["config"] = list(cfg.tta), {**config, "tta": list(cfg.tta), "amp": cfg.amp}
    if test_state is None:
        ckpt.pop("test_state", None)
    else:
        ckpt["test_state"] = test_state
    write_torch(path, ckpt)


def predict_fold(cfg, k, data: TrainData, out_dir: Path, best, device, val_idx, progress,
                 train_seconds: float = 0.0) -> FoldResult:
    """The best checkpoint on its held-out fold, the test set and the held-out split, under every TTA view,
    with the wall seconds spent: training (`train_seconds`, resumed runs included) and this. Under
    `test_stats` the test and the held-out split (predicted as `foldblend predict` would) are read with
    BatchNorm statistics re-estimated on the test images (`infer.test_batchnorm`), kept in best.pt; the
    held-out fold with the training ones."""
    started = time.perf_counter()
    model, ckpt = load_checkpoint(out_dir / "best.pt", device, test_state=False)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    bs = cfg.batch_size * 2
    desc = f"{cfg.name} fold {k} predict" if progress else None
    n_classes = len(data.classes)

    def logits(images, index):
        return infer(model, eval_loader(images, index, bs, cfg.num_workers), cfg.tta, device, ckpt["mean"],
                     ckpt["std"], cfg.amp, channels_last, desc, n_classes=n_classes)

    val_logits = logits(data.images, val_idx)
    test_state = None
    if cfg.test_stats is True and len(data.test_images) >= 2:  # "auto" is resolved by the runner
        test_state = test_batchnorm(model, eval_loader(data.test_images, np.arange(len(data.test_images)), bs,
                                                       cfg.num_workers),
                                    device, ckpt["mean"], ckpt["std"], cfg.amp, channels_last,
                                    desc=f"{cfg.name} fold {k} test statistics" if progress else None)
        if test_state is not None:
            apply_test_state(model, test_state)
    test_logits = logits(data.test_images, np.arange(len(data.test_images)))
    holdout_logits = logits(data.holdout_images, np.arange(len(data.holdout_images)))
    _record_prediction_settings(out_dir / "best.pt", cfg, test_state)
    return FoldResult(val_idx, val_logits, test_logits, holdout_logits, list(cfg.tta), best["epoch"], best["score"],
                      best.get("weights", "model"), train_seconds, time.perf_counter() - started)
