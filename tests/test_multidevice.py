"""Folds run concurrently, one per device, in worker processes (two "cpu" workers stand in for two GPUs)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from foldblend.artifacts import load_member
from foldblend.paths import Project
from foldblend.running.experiment import run_experiment
from foldblend.running.local import THREAD_VARS, worker_env
from foldblend.stages.folds import run_folds

CLASSES = ["bart", "homer", "lisa"]


def make_competition(root, per_class: int = 8, n_test: int = 4, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[5:15, 5:15, c] = 220 + i  # distinct files: no duplicate groups
            (root / "input/train" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "input/train" / name / f"{name}_{i}.png")
    (root / "input/test").mkdir(parents=True)
    for i in range(n_test):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"input/test/t{i}.png")
    (root / "input/sample_submission.csv").write_text("id,label\n" + "".join(f"t{i}.png,x\n" for i in range(n_test)))
    (root / "input/competition.yaml").write_text("n_splits: 2\n")


@pytest.mark.slow
def test_two_cpu_workers_train_every_fold_and_assemble(tmp_path, capfd):
    make_competition(tmp_path)
    project = Project.at(tmp_path)
    run_folds(project, progress=False)
    config = project.folds_dir / "tiny.yaml"
    config.write_text("model: cnn_tiny\nimg_size: 16\nepochs: 1\nbatch_size: 8\naugment: none\ntta: [identity]\n")
    scores = run_experiment(config, project, devices=["cpu", "cpu"], progress=False)
    out = capfd.readouterr().out
    assert "[tiny fold 0] on cpu" in out and "[tiny fold 1] on cpu" in out  # each fold went to a worker process
    for k in range(2):
        done = json.loads((project.model_dir("tiny", k) / "done.json").read_text())
        assert done["fold"] == k
    member = load_member(project.oof_dir("tiny"))
    assert member.oof_logits.shape == (1, 24, 3) and member.test_logits.shape == (2, 1, 4, 3)
    assert scores["n_images"] == 24
    # a rerun finds every fold finished and starts no worker
    stamp = (project.model_dir("tiny", 0) / "done.json").stat().st_mtime_ns
    run_experiment(config, project, devices=["cpu", "cpu"], progress=False)
    assert (project.model_dir("tiny", 0) / "done.json").stat().st_mtime_ns == stamp


def test_worker_env_shares_cores_and_pins_one_gpu(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    env, dev = worker_env("cpu", 2, base={})
    assert dev == "cpu" and all(env[v] == "8" for v in THREAD_VARS) and "CUDA_VISIBLE_DEVICES" not in env
    env, dev = worker_env("cuda:1", 4, base={})
    assert (dev, env["CUDA_VISIBLE_DEVICES"], env["OMP_NUM_THREADS"]) == ("cuda:0", "1", "4")
    env, dev = worker_env("cuda:1", 2, base={"CUDA_VISIBLE_DEVICES": "2,3"})  # indices of the visible GPUs
    assert (dev, env["CUDA_VISIBLE_DEVICES"]) == ("cuda:0", "3")


def test_train_uses_every_gpu_by_default_when_there_are_several(monkeypatch):
    import torch

    from foldblend.stages.train import _devices_arg, visible_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus() == ["cuda:0", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert visible_gpus() is None  # one GPU: folds in sequence, config device `auto`
    assert _devices_arg("0,1") == ["cuda:0", "cuda:1"] and _devices_arg("cpu,cpu") == ["cpu", "cpu"]
