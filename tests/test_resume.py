"""Exact resume: SIGKILL a training run after its second epoch, rerun, and end where an uninterrupted run ends.

Both runs are real `run_fold` calls in child processes (one thread each, so that float reductions run in
the same order in both); the recipe exercises every piece of state a resume restores: model, AdamW,
warmup+cosine schedule, EMA, mixup/cutmix and augmentation RNG, dropout.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import METRICS, tiny_config, tiny_data

from foldblend.config import dump_config
from foldblend.running.fold import run_fold

pytestmark = pytest.mark.slow

CHILD = """
import sys, numpy as np, yaml
from foldblend.config import config_from_dict
from foldblend.members.base import TrainData
from foldblend.running.fold import run_fold
data_path, cfg_path, out = sys.argv[1:4]
with np.load(data_path) as z:
    data = TrainData(**{k: z[k] for k in z.files}, classes=['c0', 'c1', 'c2'], fingerprint='tiny')
cfg = config_from_dict(yaml.safe_load(open(cfg_path)), cfg_path)
run_fold(cfg, 0, data, out, progress=False)
"""


def _spawn(tmp_path: Path, cfg, out: Path) -> subprocess.Popen:
    data = tiny_data(n=36)
    data_path, cfg_path = tmp_path / "data.npz", tmp_path / "cfg.yaml"
    if not data_path.exists():
        np.savez(data_path, images=data.images, labels=data.labels, fold=data.fold, test_images=data.test_images,
                 ids=data.ids, test_ids=data.test_ids, test_ok=data.test_ok)
        cfg_path.write_text(dump_config(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data_path), str(cfg_path), str(out)], env=env)


def _last_epoch(out: Path) -> int:
    try:
        return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["run"]["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


RECIPE = dict(epochs=5, ema=True, ema_decay=0.8, mixup=0.2, cutmix=1.0, drop_rate=0.2, warmup_epochs=1,
              augment="medium", label_smoothing=0.1)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(**RECIPE)
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    proc = _spawn(tmp_path, cfg, killed)
    deadline = time.time() + 120
    while _last_epoch(killed) < 1:  # two epochs completed
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "done.json").exists() and 1 <= _last_epoch(killed) < 4
    assert _spawn(tmp_path, cfg, killed).wait() == 0       # resumes from the last completed epoch
    assert _spawn(tmp_path, cfg, straight).wait() == 0     # the uninterrupted reference
    a, b = pd.read_csv(killed / "log.csv"), pd.read_csv(straight / "log.csv")
    assert len(a) == len(b) == 5
    pd.testing.assert_frame_equal(a[METRICS + ["raw_macro_f1", "ema_macro_f1"]],
                                  b[METRICS + ["raw_macro_f1", "ema_macro_f1"]], check_exact=True)
    with np.load(killed / "preds.npz") as x, np.load(straight / "preds.npz") as y:
        np.testing.assert_array_equal(x["val_logits"], y["val_logits"])
        np.testing.assert_array_equal(x["test_logits"], y["test_logits"])
    assert json.loads((killed / "done.json").read_text()) == json.loads((straight / "done.json").read_text())


def test_finished_fold_is_a_noop_and_a_changed_config_retrains(tmp_path):
    data, out = tiny_data(n=36), tmp_path / "f0"
    cfg = tiny_config(epochs=1)
    run_fold(cfg, 0, data, out, progress=False)
    stamp = (out / "done.json").stat().st_mtime_ns, (out / "best.pt").stat().st_mtime_ns
    again = run_fold(cfg, 0, data, out, progress=False)
    assert ((out / "done.json").stat().st_mtime_ns, (out / "best.pt").stat().st_mtime_ns) == stamp
    assert again["signature"]["config"] == cfg.fingerprint()

    (out / "stale_marker").write_text("from the old run")
    changed = tiny_config(epochs=1, lr=3e-3)
    summary = run_fold(changed, 0, data, out, progress=False)
    assert summary["signature"]["config"] == changed.fingerprint() != cfg.fingerprint()
    assert not (out / "stale_marker").exists()  # the fold directory was started afresh
    assert len(pd.read_csv(out / "log.csv")) == 1


def test_stale_last_checkpoint_of_another_config_is_not_resumed(tmp_path):
    data, out = tiny_data(n=36), tmp_path / "f0"
    run_fold(tiny_config(epochs=2), 0, data, out, progress=False)
    (out / "done.json").unlink()  # as if killed before predicting; now the config changes
    run_fold(tiny_config(epochs=1), 0, data, out, progress=False)
    assert len(pd.read_csv(out / "log.csv")) == 1
