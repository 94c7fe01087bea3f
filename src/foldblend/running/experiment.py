"""Fold configs end to end: images from the cache, the pending folds, the member files.

`train_experiments` is what `foldblend train` does: it plans every config first (which folds are
pending, by `signatures`), hands all their fold jobs to one executor (`local`: in sequence here or one
process per device; `ray_executor`: Ray tasks on a cluster), then assembles `oof/<exp>/` for each
experiment whose folds are all done.

It holds each experiment's lock (models/<exp>/.lock) from planning to assembly: two runs of one
experiment would delete and write each other's fold folders, while different experiments write
disjoint folders and share only the decode cache, whose files are content-addressed and written
atomically (so two experiments can train at once, e.g. from two shells on two GPUs). Fold jobs an
executor starts elsewhere (child processes, Ray tasks) are guests of the driver's lock.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from foldblend.artifacts import load_member, read_json
from foldblend.config import ExperimentConfig, load_config
from foldblend.data import cache
from foldblend.data.cache import cache_key, cached_images
from foldblend.data.find import Competition, load_competition
from foldblend.data.freshness import digest_of_test_files, require_current_scan
from foldblend.data.split import HOLDOUT, folds_fingerprint, read_folds
from foldblend.locks import hold, live_holders
from foldblend.members.assemble import assemble_member, load_fold_predictions
from foldblend.members.base import TrainData
from foldblend.members.gate import FoldPaused, epoch_gate
from foldblend.members.signatures import (
    fold_seconds,
    fold_signature,
    is_fold_done,
    is_trained,
    predict_signature,
    read_done,
)
from foldblend.paths import Project
from foldblend.running.budget import TimeKeeper
from foldblend.running.fold import LoadThreads, run_fold
from foldblend.running.jobs import Executor, FoldJob
from foldblend.running.local import LocalExecutor
from foldblend.safety import remove, say_swept, sweep_temporaries


def load_train_data(cfg: ExperimentConfig, project: Project, comp: Competition | None = None,
                    progress: bool = True) -> TrainData:
    comp = comp or load_competition(project.input)
    folds = read_folds(project.folds_csv)
    # the training signature holds the scan's content hashes: a file replaced since the scan would
    # otherwise leave its fold "finished earlier" with the old pixels
    # an image added to input/ since (not in folds.csv) is one the scan lacks: it counts too
    added = sorted(set(comp.train["image"]) - set(folds["image"]))
    require_current_scan(project.scan_csv, comp.root, list(folds["image"]) + added, then="`foldblend train`")
    unknown = sorted(set(folds["label"]) - set(comp.classes))
    if unknown:
        raise ValueError(f"{project.folds_csv}: labels {unknown[:5]} are not classes of {project.input}; "
                         f"run `foldblend folds` again")
    index = {c: i for i, c in enumerate(comp.classes)}
    # the held-out rows (fold -1) get their own cache: trained on never, predicted like test images
    is_held = folds["fold"].to_numpy() == HOLDOUT
    trained, held = folds[~is_held].reset_index(drop=True), folds[is_held].reset_index(drop=True)
    images, ok = cached_images([comp.root / p for p in trained["image"]], cfg.img_size, project.cache_dir,
                               progress=progress, root=comp.root)
    holdout_images, holdout_ok = cached_images([comp.root / p for p in held["image"]], cfg.img_size,
                                               project.cache_dir, progress=progress, root=comp.root)
    if (~ok).any() or (~holdout_ok).any():
        bad = trained["image"][~ok].tolist() + held["image"][~holdout_ok].tolist()
        raise ValueError(f"{project.folds_csv}: {len(bad)} image(s) in the folds cannot be read (e.g. {bad[0]}); "
                         f"run `foldblend scan` and `foldblend folds` so unreadable files are left out")
    test_paths = [comp.root / p for p in comp.test["image"]]
    test_images, test_ok = cached_images(test_paths, cfg.img_size, project.cache_dir, progress=progress,
                                         root=comp.root)
    # weights depend on the split and the class order; predictions also on the test files themselves
    train_digest = _digest(folds_fingerprint(folds), *comp.classes, *_train_contents(project, folds))
    test_digest = _digest(*comp.test["id"], cache_key(test_paths, cfg.img_size, comp.root),
                          np.packbits(test_ok).tobytes().hex())
    return TrainData(images=images, labels=trained["label"].map(index).to_numpy(np.int64),
                     fold=trained["fold"].to_numpy(np.int64), classes=list(comp.classes),
                     test_images=test_images, fingerprint=train_digest, ids=trained["image"].to_numpy(str),
                     test_ids=comp.test["id"].to_numpy(str), test_ok=test_ok, test_fingerprint=test_digest,
                     holdout_images=holdout_images, holdout_ids=held["image"].to_numpy(str),
                     holdout_labels=held["label"].map(index).to_numpy(np.int64),
                     feature_cache=project.feature_cache_dir)


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


@dataclass
class Plan:
    """One fold config, planned: its data and the folds still to run."""

    config_path: Path
    cfg: ExperimentConfig
    data: TrainData
    n_folds: int
    jobs: list[FoldJob]
    inputs: dict             # digests of the files its predictions are made from (recorded in scores.json)


def plan_experiment(config_path: str | Path, project: Project, folds: list[int] | None = None,
                    overrides: list[str] | None = None, progress: bool = True,
                    locks: contextlib.ExitStack | None = None) -> Plan:
    """Load a config and its data, and find its pending folds (finished ones are skipped, whoever ran them).

    With `locks`, the experiment's lock is taken into that stack (held until the caller closes it)."""
    cfg = resolve_test_stats(load_config(config_path, overrides), project)
    if locks is not None:
        locks.enter_context(hold(lock_path(project, cfg.name), f"experiment {cfg.name!r} (models/{cfg.name}/)",
                                 fix="wait for it to finish, or train another fold config meanwhile"))
        for folder, recursive in ((project.models / cfg.name, True), (project.oof_dir(cfg.name), False),
                                  (project.cache_dir, False), (project.feature_cache_dir, False)):
            say_swept(sweep_temporaries(folder, recursive), project)
    comp = load_competition(project.input)
    inputs = {"test_files": digest_of_test_files(comp)}  # before decoding: a file replaced meanwhile shows
    data = load_train_data(cfg, project, comp, progress=progress)
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
    jobs = [FoldJob(cfg.name, k, cfg, Path(config_path).resolve(), list(overrides or []),
                    project.model_dir(cfg.name, k), signature, predictions) for k in pending]
    return Plan(Path(config_path), cfg, data, n_folds, jobs, inputs)


def resolve_test_stats(cfg: ExperimentConfig, project: Project) -> ExperimentConfig:
    """`test_stats: auto` made true or false: true when the scan's shift check (folds/shift.json) warns that
    the test differs from train, as the blend's importance weights and selection are turned on; false
    without a scan or without a warning (a test drawn like train is read with the training statistics)."""
    if cfg.test_stats != "auto":
        return cfg
    on = bool((read_json(project.shift_json) or {}).get("optimistic"))
    if on:
        print(f"[{cfg.name}] test_stats auto: the scan warns that the test differs from train, so the test is read "
              f"with its own statistics (BatchNorm, linear heads' scaling); set test_stats: false to keep the "
              f"training ones")
    return replace(cfg, test_stats=on)


LOCK_NAME = ".lock"


def lock_path(project: Project, exp: str) -> Path:
    return project.models / exp / LOCK_NAME


def other_trainings(project: Project) -> list[dict]:
    """Live `train` runs of any experiment, other than this process."""
    return live_holders(project.models.glob(f"*/{LOCK_NAME}"))


def train_experiments(config_paths: list[str | Path], project: Project, executor: Executor | None = None,
                      folds: list[int] | None = None, overrides: list[str] | None = None,
                      devices: list[str] | None = None, assemble: bool = True,
                      progress: bool = True, time_limit: dict | None = None) -> dict[str, dict | None]:
    """Train the requested folds of every config (skipping finished ones) with one executor, then write
    oof/<exp>/ for each experiment whose folds are all done. Returns {experiment: scores or None}.

    `time_limit` ({"seconds", "started" (time.monotonic), "estimates" and "fold_estimates": {member: s},
    "save": callable}) holds a limit over the training
    (`running.budget`): trials first, then the rest by value, re-planned as it goes, each fold on the cores
    other processes leave free (`running.fold.LoadThreads`). Every experiment's lock
    is held from its planning to its assembly."""
    with contextlib.ExitStack() as locks:
        plans: list[Plan] = []
        for path in config_paths:
            plan = plan_experiment(path, project, folds, overrides, progress, locks)
            clash = next((p for p in plans if p.cfg.name == plan.cfg.name), None)
            if clash is not None:
                raise ValueError(f"{path} and {clash.config_path} both name experiment {plan.cfg.name!r} "
                                 f"(models/{plan.cfg.name}/): rename one, or set `name:` in it")
            if devices:
                plan.cfg.device = devices[0]  # one device: every fold in this process runs on it
            plans.append(plan)
        by_name = {p.cfg.name: p for p in plans}

        def train_here(job: FoldJob):
            plan = by_name[job.name]
            cfg = plan.cfg if threads is None else threads.config(plan.cfg)
            return run_fold(cfg, job.fold, plan.data, job.out_dir, progress=progress)

        jobs = [job for plan in plans for job in plan.jobs]
        keeper = threads = None
        if time_limit is not None and jobs:
            if executor is not None or (devices and len(devices) > 1):
                print("WARNING: the time limit is held on the local executor with one device only: this run "
                      "trains every pending fold without it")
            else:
                keeper = TimeKeeper(time_limit["seconds"], jobs, {p.cfg.name: p.n_folds for p in plans},
                                    time_limit.get("estimates") or {}, _fold0_scores(plans, project),
                                    save=time_limit.get("save"), start=time_limit.get("started"),
                                    fold_estimates=time_limit.get("fold_estimates"))
                threads = LoadThreads(keeper.note)
        executor = executor or LocalExecutor(devices)
        try:
            if keeper is not None:
                train_within(keeper, train_here)
            else:
                executor.run(project, jobs, train_here)
        except Exception:
            if assemble:  # experiments whose folds all finished still get their oof/<exp>/
                for plan in plans:
                    if _all_folds_done(plan, project):
                        assemble_experiment(plan.cfg, plan.data, project, plan.n_folds, plan.inputs)
            raise
        if not assemble:
            return {p.cfg.name: None for p in plans}
        return {p.cfg.name: assemble_experiment(p.cfg, p.data, project, p.n_folds, p.inputs) for p in plans}


def train_within(keeper: TimeKeeper, train_here: Callable[[FoldJob], dict]) -> None:
    """The fold jobs in the keeper's order: every member's trial on fold 0, then what it allocates, each fold
    admitted (or not) once the work left is re-projected, each epoch gated."""
    for job in keeper.order():
        if not keeper.admit_trial(job):
            continue
        t0 = time.monotonic()
        try:
            with epoch_gate(keeper.trial_gate(job)):
                done = train_here(job)
        except FoldPaused as paused:
            keeper.trial_done(job, paused.score, time.monotonic() - t0)
        else:
            keeper.trial_done(job, done["best_macro_f1"], time.monotonic() - t0,
                              fold_seconds(job.out_dir).get("predict"))
    for job in keeper.allocate():
        if not keeper.admit(job):
            continue
        t0 = time.monotonic()
        with epoch_gate(keeper.gate(job)):
            train_here(job)
        keeper.fold_done(job, time.monotonic() - t0, fold_seconds(job.out_dir).get("predict"))
    keeper.save(keeper.record())


def _fold0_scores(plans: list[Plan], project: Project) -> dict[str, float]:
    """Held-out macro-F1 of each experiment's fold 0 when it finished earlier (no trial needed then)."""
    out = {}
    for plan in plans:
        done = read_done(project.model_dir(plan.cfg.name, 0))
        if 0 not in [j.fold for j in plan.jobs] and done:
            out[plan.cfg.name] = float(done.get("best_macro_f1") or 0.0)
    return out


def run_experiment(config_path: str | Path, project: Project, folds: list[int] | None = None,
                   overrides: list[str] | None = None, devices: list[str] | None = None,
                   assemble: bool = True, progress: bool = True) -> dict | None:
    """One fold config on the local executor: `train_experiments` for a single config."""
    scores = train_experiments([config_path], project, folds=folds, overrides=overrides, devices=devices,
                               assemble=assemble, progress=progress)
    return next(iter(scores.values()))


def _all_folds_done(plan: Plan, project: Project) -> bool:
    signature, predictions = fold_signature(plan.cfg, plan.data), predict_signature(plan.cfg, plan.data)
    return all(is_fold_done(project.model_dir(plan.cfg.name, k), signature, predictions)
               for k in range(plan.n_folds))


def _remove_folds_of_an_older_split(project: Project, exp: str, n_folds: int) -> None:
    """fold_<k> for k >= n_folds was trained on a split that no longer exists; predict would still load it."""
    for d in sorted(project.models.glob(f"{exp}/fold_*")):
        suffix = d.name.split("_", 1)[1]
        if suffix.isdigit() and int(suffix) >= n_folds:
            remove(d, inside=project.models)  # said only once done: a refused deletion raises first
            print(f"[{exp}] removed {project.rel(d)}: folds.csv now has {n_folds} folds")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def assemble_experiment(cfg: ExperimentConfig, data: TrainData, project: Project, n_folds: int,
                        inputs: dict | None = None) -> dict | None:
    """oof/<exp>/ from every fold's predictions; `inputs` (digests of the files predicted) go to scores.json."""
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
                             test_ok=data.test_ok, holdout_ids=data.holdout_ids, holdout_labels=data.holdout_labels,
                             extra_scores={
                                 "stamp": stamp, "inputs": inputs or {}, "model": cfg.model, "config": cfg.to_dict(),
                                 "best_epochs": [d["best_epoch"] for d in done]})
    if (~data.test_ok).any():
        print(f"WARNING [{cfg.name}] {int((~data.test_ok).sum())} test image(s) unreadable: "
              f"they are predicted as the training prior's most likely class")
    return scores


def remove_unused_caches(project: Project, since: float) -> None:
    """After a `train` of every fold config: delete the decode caches none of them used since `since`,
    unless another `train` runs (it may be about to open one of them)."""
    others = other_trainings(project)
    if others:
        print(f"unused decoded-image caches are kept: another train runs (pid {others[0].get('pid')} on "
              f"{others[0].get('host')})")
        return
    gone = cache.remove_unused_caches(project.cache_dir, since=since)
    if gone:
        print(f"removed {len(gone)} decoded-image cache(s) that no fold config uses any more")
