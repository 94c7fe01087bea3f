"""One fold of any member kind: the done-check, the kind's `train_fold`, and the files every fold ends with.

`run_fold` is what the executors run per fold job. A fold whose done.json has the current signatures is
skipped; otherwise done.json is removed first (the fold is not done until it is written again), the
kind trains or resumes (told by `previous` when its weights are current and only its predictions are
not), and then `preds.npz`, `time.json` and, last, `done.json` are written: a kill at any point leaves a
fold that is not done, and the next run resumes it.

The kind trains with the config's `threads` torch threads, whichever executor runs the fold and on
whatever machine: on CPU a kernel splits its sums by thread, so another thread count ends a fold with
other weights (one epoch of the demo at 1 thread against 2 moved its logits by up to 0.16 and changed up
to 3% of its test predictions). The default, 2, is what torch itself takes on a 2-core machine, so local
training there keeps using both cores; a bigger machine trains faster with more folds at once (Ray,
`--gpus cpu,cpu`) or with a larger `threads`, set in the config so that every executor uses it. Under
a time limit, whose run depends on the machine's speed anyway, each fold takes only the cores other
processes leave free (`LoadThreads`, `cpu.threads_for_load`): beside them, every thread stalls the rest.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from foldblend.artifacts import write_json, write_npz
from foldblend.config import ExperimentConfig
from foldblend.cpu import others_cpu, threads_for_load
from foldblend.members.base import TrainData
from foldblend.members.registry import get_kind
from foldblend.members.signatures import (
    DEFAULT_CHECKPOINT,
    fold_signature,
    is_fold_done,
    is_trained,
    predict_signature,
    read_done,
    record_seconds,
)
from foldblend.safety import remove


def run_fold(cfg: ExperimentConfig, k: int, data: TrainData, out_dir: str | Path, progress: bool = True) -> dict:
    """Train (or resume, or only predict) fold k of `cfg` into out_dir with its kind; returns its done.json."""
    kind = get_kind(cfg.kind)
    out_dir = Path(out_dir)
    signature, predictions = fold_signature(cfg, data), predict_signature(cfg, data)
    if is_fold_done(out_dir, signature, predictions):
        return read_done(out_dir)
    previous = read_done(out_dir) if is_trained(out_dir, signature) else None
    if (out_dir / "done.json").exists():
        remove(out_dir / "done.json", inside=out_dir)
    with fold_threads(cfg.threads):
        result = kind.train_fold(cfg, k, data, out_dir, previous, progress=progress)
    write_npz(out_dir / "preds.npz", val_index=result.val_index, val_logits=result.val_logits,
              test_logits=result.test_logits, holdout_logits=result.holdout_logits, views=np.asarray(result.views))
    summary = {"signature": signature, "predictions": predictions, "fold": k,
               **({} if kind.checkpoint == DEFAULT_CHECKPOINT else {"checkpoint": kind.checkpoint}),
               "best_epoch": result.best_epoch, "best_macro_f1": result.best_macro_f1, "weights": result.weights}
    record_seconds(out_dir, result.train_seconds, result.predict_seconds)
    write_json(out_dir / "done.json", summary)
    return summary


@contextlib.contextmanager
def fold_threads(threads: int):
    """torch's intra-op threads set to `threads` for the block, then back to what they were."""
    import torch  # loaded by every kind that trains anyway; reading a config or planning does not need it

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LoadThreads:
    """Each fold's torch threads lowered to the cores other processes leave free, measured just before it
    (`cpu.threads_for_load`), with a line (`say`) each time the count changes."""

    def __init__(self, say: Callable[[str], None], measure: Callable[[], float] | None = None,
                 n_cores: int | None = None):
        self.say, self.measure, self.n_cores = say, measure or others_cpu, n_cores
        self.last: int | None = None

    def config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        others = self.measure()
        threads = threads_for_load(cfg.threads, others, self.n_cores)
        if threads != (cfg.threads if self.last is None else self.last):
            self.say(f"other processes use {others:.0%} of the CPU: folds train with {threads} torch thread(s)"
                     + (f" (their config's {cfg.threads} would stall on the cores those hold)"
                        if threads < cfg.threads else ", their config's, again"))
        self.last = threads
        return cfg if threads == cfg.threads else replace(cfg, threads=threads)
