"""An experiment (one fold config) end to end: images from the cache, every fold, the member files.

`run_experiment` is what `foldblend train` does. Folds run in sequence on one device, or concurrently
one per device with `devices=["cuda:0", "cuda:1"]` (each fold in its own process; two "cpu" workers
exercise the same path without a GPU).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import load_member
from .cache import cache_key, cached_images
from .competition import Competition, load_competition
from .config import ExperimentConfig, load_config
from .folds import folds_fingerprint, read_folds
from .paths import Project
from .predict import assemble_member, load_fold_predictions
from .train import TrainData, fold_signature, is_fold_done, is_trained, predict_signature, train_fold


def load_train_data(cfg: ExperimentConfig, project: Project, comp: Competition | None = None,
                    progress: bool = True) -> TrainData:
    comp = comp or load_competition(project.input)
    folds = read_folds(project.folds_csv)
    unknown = sorted(set(folds["label"]) - set(comp.classes))
    if unknown:
        raise ValueError(f"{project.folds_csv}: labels {unknown[:5]} are not classes of {project.input}; "
                         f"run `foldblend folds` again")
    index = {c: i for i, c in enumerate(comp.classes)}
    images, ok = cached_images([comp.root / p for p in folds["image"]], cfg.img_size, project.cache_dir,
                               progress=progress, root=comp.root)
    if (~ok).any():
        bad = folds["image"][~ok].tolist()
        raise ValueError(f"{project.folds_csv}: {len(bad)} image(s) in the folds cannot be read (e.g. {bad[0]}); "
                         f"run `foldblend scan` and `foldblend folds` so unreadable files are left out")
    test_paths = [comp.root / p for p in comp.test["image"]]
    test_images, test_ok = cached_images(test_paths, cfg.img_size, project.cache_dir, progress=progress,
                                         root=comp.root)
    # weights depend on the split and the class order; predictions also on the test files themselves
    train_digest = _digest(folds_fingerprint(folds), *comp.classes, *_train_contents(project, folds))
    test_digest = _digest(*comp.test["id"], cache_key(test_paths, cfg.img_size, comp.root),
                          np.packbits(test_ok).tobytes().hex())
    return TrainData(images=images, labels=folds["label"].map(index).to_numpy(np.int64),
                     fold=folds["fold"].to_numpy(np.int64), classes=list(comp.classes),
                     test_images=test_images, fingerprint=train_digest, ids=folds["image"].to_numpy(str),
                     test_ids=comp.test["id"].to_numpy(str), test_ok=test_ok, test_fingerprint=test_digest)


def _train_contents(project: Project, folds) -> list[str]:
    """The scan's content hash of every train image, in folds order: a file replaced under the same
    name retrains, while a re-extracted archive (new mtimes, same bytes) does not."""
    if not project.scan_csv.exists():
        return []
    scan = pd.read_csv(project.scan_csv, usecols=["image", "md5"], dtype=str, keep_default_na=False)
    md5 = dict(zip(scan["image"], scan["md5"]))
    return [md5.get(image, "") for image in folds["image"]]


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def run_experiment(config_path: str | Path, project: Project, folds: list[int] | None = None,
                   overrides: list[str] | None = None, devices: list[str] | None = None,
                   assemble: bool = True, progress: bool = True) -> dict | None:
    """Train the requested folds (skipping finished ones), then write oof/<exp>/ when every fold is done."""
    cfg = load_config(config_path, overrides)
    data = load_train_data(cfg, project, progress=progress)
    n_folds = int(data.fold.max()) + 1
    todo = folds if folds is not None else (cfg.folds if cfg.folds is not None else list(range(n_folds)))
    bad = [k for k in todo if not 0 <= k < n_folds]
    if bad:
        raise ValueError(f"{config_path}: fold {bad[0]} does not exist (folds.csv has folds 0..{n_folds - 1})")
    _remove_folds_of_an_older_split(project, cfg.name, n_folds)
    signature, predictions = fold_signature(cfg, data), predict_signature(cfg, data)
    pending = [k for k in todo if not is_fold_done(project.model_dir(cfg.name, k), signature, predictions)]
    for k in sorted(set(todo) - set(pending)):
        print(f"[{cfg.name} fold {k}] finished earlier with this config: skipped")
    for k in pending:
        if is_trained(project.model_dir(cfg.name, k), signature):
            print(f"[{cfg.name} fold {k}] weights are current; predicting again (TTA views or test images changed)")
    if devices and len(devices) > 1 and len(pending) > 1:
        _run_on_devices(config_path, project, pending, overrides or [], devices)
    else:
        if devices:
            cfg.device = devices[0]
        for k in pending:
            train_fold(cfg, k, data, project.model_dir(cfg.name, k), progress=progress)
    if not assemble:
        return None
    return assemble_experiment(cfg, data, project, n_folds)


def _remove_folds_of_an_older_split(project: Project, exp: str, n_folds: int) -> None:
    """fold_<k> for k >= n_folds was trained on a split that no longer exists; predict would still load it."""
    for d in sorted(project.models.glob(f"{exp}/fold_*")):
        suffix = d.name.split("_", 1)[1]
        if suffix.isdigit() and int(suffix) >= n_folds:
            print(f"[{exp}] removing {project.rel(d)}: folds.csv now has {n_folds} folds")
            shutil.rmtree(d)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def assemble_experiment(cfg: ExperimentConfig, data: TrainData, project: Project, n_folds: int) -> dict | None:
    signature, predictions = fold_signature(cfg, data), predict_signature(cfg, data)
    dirs = [project.model_dir(cfg.name, k) for k in range(n_folds)]
    missing = [k for k, d in enumerate(dirs) if not is_fold_done(d, signature, predictions)]
    if missing:
        stale = [k for k in missing if is_trained(dirs[k], signature)]
        print(f"[{cfg.name}] folds {missing} not done yet"
              + (f" ({stale} trained but not predicted with the current tta/test images)" if stale else "")
              + f": oof/{cfg.name}/ is written once every fold is done")
        return None
    out = project.oof_dir(cfg.name)
    # the member is current only if made from exactly these fold predictions (a retrained fold changes them)
    stamp = {"signature": signature, "predictions": predictions, "n_folds": n_folds,
             "preds": [_file_digest(d / "preds.npz") for d in dirs]}
    scores_path = out / "scores.json"
    if (out / "oof.npz").exists() and scores_path.exists():
        if json.loads(scores_path.read_text()).get("stamp") == stamp:
            return load_member(out).scores  # finished earlier: a no-op
    done = [json.loads((d / "done.json").read_text()) for d in dirs]
    scores = assemble_member(out, [load_fold_predictions(d / "preds.npz") for d in dirs], ids=data.ids,
                             labels=data.labels, fold=data.fold, classes=data.classes, test_ids=data.test_ids,
                             test_ok=data.test_ok, extra_scores={
                                 "stamp": stamp, "model": cfg.model, "config": cfg.to_dict(),
                                 "best_epochs": [d["best_epoch"] for d in done]})
    if (~data.test_ok).any():
        print(f"WARNING [{cfg.name}] {int((~data.test_ok).sum())} test image(s) unreadable: "
              f"they are predicted as the training prior's most likely class")
    return scores


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(device: str, n_workers: int, base: dict | None = None) -> tuple[dict, str]:
    """(environment, device name inside the worker) for one fold process.

    Each worker gets its share of the CPU cores (torch, OpenMP and BLAS would otherwise each start one
    thread per core in every process: n_workers x cores threads fighting over the cores). A CUDA worker
    sees only its own GPU, so nothing in it (a bf16 probe, a stray tensor) opens a context on GPU 0.
    """
    env = dict(os.environ if base is None else base)
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env.update({var: threads for var in THREAD_VARS})
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
        device = "cuda:0"
    return env, device


def _run_on_devices(config_path, project: Project, folds: list[int], overrides: list[str], devices: list[str]):
    """One fold per device at a time, each in its own process; folds queue for the next free device."""
    free: queue.Queue[str] = queue.Queue()
    for dev in devices:
        free.put(dev)
    config_path = Path(config_path).resolve()

    def one(k: int) -> int:
        dev = free.get()
        try:
            env, worker_device = worker_env(dev, len(devices))
            # the worker's device goes last: it wins over a `device=` in the user's overrides
            sets = [*overrides, f"device={worker_device}"]
            cmd = [sys.executable, "-m", "foldblend.cli", "--root", str(project.root), "train", str(config_path),
                   "--folds", str(k), "--no-assemble", "--quiet"] + [a for o in sets for a in ("--set", o)]
            print(f"[fold {k}] on {dev}", flush=True)
            return subprocess.run(cmd, env=env).returncode
        finally:
            free.put(dev)

    with ThreadPoolExecutor(len(devices)) as pool:
        codes = list(pool.map(one, folds))
    failed = [k for k, c in zip(folds, codes) if c != 0]
    if failed:
        raise RuntimeError(f"{config_path}: folds {failed} failed in their worker processes (see output above)")
