"""The Ray executor: fold jobs as Ray tasks on a local Ray instance (2 CPUs), compared with the local executor.

One Ray instance serves the whole module (start-up costs seconds). CPU results are bit-identical between
executors because every fold trains with its config's `threads` (default 2) wherever it runs: the local
runs here give the driver process another thread count on purpose, and the folds still match.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CONFIG, make_competition

from foldblend.config import config_from_dict
from foldblend.paths import Project
from foldblend.running import fold_task
from foldblend.running.experiment import plan_experiment, train_experiments
from foldblend.running.fold_task import LineStream, ProjectNotVisible, check_project, write_probe
from foldblend.running.jobs import FoldJob
from foldblend.running.ray_executor import RayExecutor, _check_written, check_nodes, task_job, task_resources
from foldblend.stages.folds import run_folds

METRICS = ["epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "weights"]
SECOND_CONFIG = TINY_CONFIG.replace("lr: 0.01", "lr: 0.02").replace("augment: light", "augment: medium")
# every piece of state a resume restores: model, AdamW, warmup + cosine, EMA, mixup/cutmix and augmentation
# RNG, dropout; 8 epochs leave a wide window to kill the task in after its second one
RESUME_CONFIG = TINY_CONFIG.replace("epochs: 1", "epochs: 8") + (
    "ema: true\nema_decay: 0.8\nmixup: 0.2\ncutmix: 1.0\ndrop_rate: 0.2\nwarmup_epochs: 1\nlabel_smoothing: 0.1\n")


# ----------------------------------------------------------------------------- without a Ray instance


def test_a_worker_that_cannot_see_the_project_is_refused_clearly(tmp_path):
    project = Project.at(tmp_path)
    token = write_probe(project)
    assert check_project(tmp_path, token, wait_s=0)  # the driver's own folder: seen
    with pytest.raises(ProjectNotVisible, match="no such folder there.*same path"):
        check_project(tmp_path / "elsewhere", token, wait_s=0)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "models", copy / "models")
    token = write_probe(project)  # a new run's token: a copy of the folder (not a shared one) has the old one
    with pytest.raises(ProjectNotVisible, match="not the one the driver writes to.*different"):
        check_project(copy, token, wait_s=0)


def test_done_json_a_driver_cannot_see_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("foldblend.running.ray_executor.VISIBLE_WAIT_S", 0)
    job = FoldJob("tiny", 0, config_from_dict({"name": "tiny"}), tmp_path / "tiny.yaml", [],
                  tmp_path / "models/tiny/fold_0", {"config": "x"})
    with pytest.raises(RuntimeError, match="not visible to the driver.*same path"):
        _check_written(job)


def test_fold_lines_are_forwarded_and_progress_bars_dropped():
    got = []
    stream = LineStream(got.append)
    stream.write("[tiny fold 0] epoch 1/3")
    stream.write("\rtiny fold 0 epoch 2/3:  40%|####      | 2/5")  # a tqdm redraw
    stream.write(" loss 0.5\n[tiny fold 0] epoch 2")
    stream.close_line()
    assert got == ["[tiny fold 0] epoch 1/3 loss 0.5", "[tiny fold 0] epoch 2"]


def test_each_fold_asks_for_what_its_config_needs():
    # a CPU per torch thread (the config's `threads`, default 2) and per loader worker
    cpu = config_from_dict({"name": "x", "device": "cpu", "num_workers": 3})
    assert task_resources(cpu, cluster_gpus=4) == {"num_cpus": 5, "num_gpus": 0}
    auto = config_from_dict({"name": "x"})
    assert task_resources(auto, cluster_gpus=0) == {"num_cpus": 2, "num_gpus": 0}
    assert task_resources(auto, cluster_gpus=2) == {"num_cpus": 2, "num_gpus": 1}
    assert task_resources(config_from_dict({"name": "x", "threads": 4}), 0) == {"num_cpus": 4, "num_gpus": 0}
    # --cpus-per-fold changes what Ray reserves, not the threads the fold trains with
    assert task_resources(auto, cluster_gpus=0, cpus_per_fold=6) == {"num_cpus": 6, "num_gpus": 0}
    job = FoldJob("x", 0, config_from_dict({"name": "x", "device": "cuda:3"}), Path("x.yaml"), [], Path("m"), {})
    # the task sees only the GPU Ray gave it, as cuda:0; the driver's job is left as it was
    assert task_job(job, task_resources(job.cfg, 8)).cfg.device == "cuda:0" and job.cfg.device == "cuda:3"


def test_cli_refuses_ray_options_that_do_not_fit(tiny_project, capsys):
    from foldblend.cli import main

    assert main(["--root", str(tiny_project), "train", "--address", "auto"]) == 2
    assert "--address and --cpus-per-fold belong to --executor ray" in capsys.readouterr().err
    assert main(["--root", str(tiny_project), "train", "--executor", "ray", "--gpus", "0,1"]) == 2
    assert "--gpus chooses local devices" in capsys.readouterr().err


NO_RAY = """
import sys
sys.modules["ray"] = None  # as if Ray were not installed: `import ray` raises ImportError
from foldblend.cli import main
root = sys.argv[1]
assert main(["--root", root, "train", "--executor", "ray"]) == 2
assert main(["--root", root, "train", "--quiet"]) == 0
"""


@pytest.mark.slow
def test_without_ray_the_ray_executor_names_the_install_command_and_local_training_works(tiny_project):
    run_folds(Project.at(tiny_project), progress=False)
    out = subprocess.run([sys.executable, "-c", NO_RAY, str(tiny_project)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'needs Ray, which is not installed here: pip install "foldblend[ray]"' in out.stderr
    assert "Traceback" not in out.stderr
    assert (tiny_project / "oof" / "tiny" / "oof.npz").exists()  # the local path never needed Ray


# ----------------------------------------------------------------------------- on a local Ray instance


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="fbray")  # short: Ray's unix sockets live under it (107-byte limit)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _project(root: Path, configs: dict[str, str]) -> Project:
    make_competition(root)
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    for name, text in configs.items():
        (root / "folds" / f"{name}.yaml").write_text(text)
    project = Project.at(root)
    run_folds(project, progress=False)
    return project


def _local(project: Project, configs: list[Path], driver_threads: int = 3, **kw):
    """The local executor in a driver whose own torch thread count is not the folds' (as on a machine with
    another number of cores): each fold still trains with its config's `threads`, as each Ray task does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(driver_threads)
    try:
        return train_experiments(configs, project, progress=False, **kw)
    finally:
        torch.set_num_threads(threads)


def assert_same_fold(a: Path, b: Path) -> None:
    """The files of two fold directories, and everything in them that does not record wall time."""
    names = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert names(a) == names(b) == ["best.pt", "config.yaml", "done.json", "last.pt", "log.csv", "preds.npz",
                                    "time.json"]
    assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
    assert json.loads((a / "done.json").read_text()) == json.loads((b / "done.json").read_text())
    pd.testing.assert_frame_equal(pd.read_csv(a / "log.csv")[METRICS], pd.read_csv(b / "log.csv")[METRICS],
                                  check_exact=True)
    with np.load(a / "preds.npz") as x, np.load(b / "preds.npz") as y:
        assert x.files == y.files
        for key in x.files:
            np.testing.assert_array_equal(x[key], y[key])
    best_a, best_b = (torch.load(d / "best.pt", map_location="cpu", weights_only=True) for d in (a, b))
    assert best_a.keys() == best_b.keys()
    for key, value in best_a["state_dict"].items():
        assert torch.equal(value, best_b["state_dict"][key]), key


@pytest.mark.slow
def test_two_experiments_as_ray_tasks_match_the_local_executor(ray_instance, tmp_path, capsys):
    project = _project(tmp_path, {"tiny": TINY_CONFIG, "other": SECOND_CONFIG})
    configs = sorted(project.folds_dir.glob("*.yaml"))
    scores = train_experiments(configs, project, executor=RayExecutor(progress=True))
    out = capsys.readouterr().out
    for exp in ("other", "tiny"):
        for k in (0, 1):  # every fold was a task, and its lines reached the driver
            assert f"[{exp} fold {k}] on " in out and f"[{exp} fold {k}] epoch 1/1 loss" in out
        assert scores[exp]["n_images"] == 36
    # never more folds at once than the instance has CPUs (each fold asks for two: a CPU per thread)
    spans = [((d / "config.yaml").stat().st_mtime, (d / "done.json").stat().st_mtime)
             for d in sorted(project.models.glob("*/fold_*"))]
    assert len(spans) == 4 and max(sum(a <= t < b for a, b in spans) for t, _ in spans) <= 1
    ray_models = tmp_path / "ray_models"
    for exp in ("other", "tiny"):
        shutil.copytree(project.models / exp, ray_models / exp)
    ray_oof = {exp: json.loads((project.oof_dir(exp) / "scores.json").read_text()) for exp in ("other", "tiny")}

    # finished folds are skipped whoever trained them: the local executor trains nothing
    stamp = (project.model_dir("tiny", 1) / "done.json").stat().st_mtime_ns
    train_experiments(configs, project, progress=False)
    assert "[tiny fold 1] finished earlier with this config: skipped" in capsys.readouterr().out
    assert (project.model_dir("tiny", 1) / "done.json").stat().st_mtime_ns == stamp

    # and the local executor, from scratch, writes the very same fold directories and members
    for exp in ("other", "tiny"):
        shutil.rmtree(project.models / exp)
        shutil.rmtree(project.oof_dir(exp))
    _local(project, configs)
    for exp in ("other", "tiny"):
        for k in (0, 1):
            assert_same_fold(ray_models / exp / f"fold_{k}", project.model_dir(exp, k))
        local = json.loads((project.oof_dir(exp) / "scores.json").read_text())
        for scores_ in (local, ray_oof[exp]):
            scores_.pop("stamp")  # holds digests of the preds.npz files, whose zip entries carry a time
        assert local == ray_oof[exp]


# models whose tiny folds end with other logits at 1, 2 or 3 threads (measured): they would show it if an
# executor trained a fold with the thread count of its process, its CPUs or its machine
THREADED = {"r10": TINY_CONFIG.replace("cnn_tiny", "resnet10t"),  # threads: 2, the default
            "small3": TINY_CONFIG.replace("cnn_tiny", "cnn_small") + "threads: 3\n"}


@pytest.mark.slow
def test_multithreaded_folds_are_the_same_on_every_executor(ray_instance, tmp_path, capsys):
    """Two and three threads per fold, on Ray (a CPU reserved per fold, not per thread), in this process
    (itself at one thread, then at four) and in two worker processes (each given half the cores): the
    same files."""
    project = _project(tmp_path, THREADED)
    configs = sorted(project.folds_dir.glob("*.yaml"))
    runs = tmp_path / "runs"
    # fold 0 of each: as the worker processes are told, device cpu (the same config.yaml everywhere)
    kw = {"folds": [0], "overrides": ["device=cpu"], "assemble": False}

    def keep(name: str) -> None:
        (runs / name).mkdir(parents=True)
        for exp in THREADED:
            shutil.move(project.model_dir(exp, 0), runs / name / exp)

    train_experiments(configs, project, executor=RayExecutor(cpus_per_fold=1, progress=True), **kw)
    out = capsys.readouterr().out
    assert re.search(r"\[r10 fold 0\] on .*, 2 thread\(s\)\)", out)
    assert re.search(r"\[small3 fold 0\] on .*, 3 thread\(s\)\)", out)
    keep("ray")
    for driver in (1, 4):
        _local(project, configs, driver_threads=driver, **kw)
        keep(f"here_{driver}")
    train_experiments(configs, project, devices=["cpu", "cpu"], progress=False, **kw)
    keep("workers")
    for exp in THREADED:
        for other in ("here_1", "here_4", "workers"):
            assert_same_fold(runs / "ray" / exp, runs / other / exp)


def _ray_task_pids(label: str) -> list[int]:
    """Processes under this one (the Ray instance's workers) running the task named `label`."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    me, found = os.getpid(), []
    for pid in parents:
        p, seen = pid, 0
        while p in parents and p != me and seen < 50:
            p, seen = parents[p], seen + 1
        if p == me:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if title == f"ray::{label}":
                found.append(pid)
    return found


def _wait_dead(pid: int) -> None:
    for _ in range(500):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.01)


def _last_epoch(out: Path) -> int:
    try:
        return torch.load(out / "last.pt", map_location="cpu", weights_only=True)["run"]["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the task's process in /proc")
def test_a_sigkilled_task_is_retried_and_resumes_to_identical_metrics(ray_instance, tmp_path, capsys):
    project = _project(tmp_path, {"tiny": RESUME_CONFIG})
    config, out = project.folds_dir / "tiny.yaml", project.model_dir("tiny", 0)
    killed: list[tuple[int, int]] = []

    def kill_after_second_epoch():
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "done.json").exists():
            pids = _ray_task_pids("tiny fold 0")
            if pids and _last_epoch(out) >= 1:
                os.kill(pids[0], signal.SIGKILL)
                _wait_dead(pids[0])  # then last.pt is what the retry resumes from
                killed.append((pids[0], _last_epoch(out)))
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_second_epoch, daemon=True)
    watcher.start()
    train_experiments([config], project, folds=[0], assemble=False, executor=RayExecutor(progress=True))
    watcher.join()
    lines = capsys.readouterr().out
    assert killed and 1 <= killed[0][1] < 7, "the task was not killed mid-fold"
    starts = [line for line in lines.splitlines() if "[tiny fold 0] on " in line]
    assert any(f"pid {killed[0][0]}," in line for line in starts), (killed, starts)  # it ran the fold ...
    assert f"[tiny fold 0] resuming after epoch {killed[0][1] + 1}" in lines  # ... and a retry resumed it
    assert len(pd.read_csv(out / "log.csv")) == 8

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(out)
    _local(project, [config], folds=[0], assemble=False)  # the uninterrupted reference
    assert_same_fold(resumed, out)
    pd.testing.assert_frame_equal(pd.read_csv(resumed / "log.csv")[["raw_macro_f1", "ema_macro_f1"]],
                                  pd.read_csv(out / "log.csv")[["raw_macro_f1", "ema_macro_f1"]], check_exact=True)


@pytest.mark.slow
def test_a_failing_fold_is_one_line_and_the_others_finish(ray_instance, tmp_path):
    project = _project(tmp_path, {"tiny": TINY_CONFIG})
    plan = plan_experiment(project.folds_dir / "tiny.yaml", project, progress=False)
    plan.jobs[1].signature = {**plan.jobs[1].signature, "data": "another split"}  # as if folds.csv changed
    with pytest.raises(RuntimeError) as err:
        RayExecutor(progress=False).run(project, plan.jobs, train_here=None)
    message = str(err.value)
    assert message.startswith("1 fold job(s) failed (tiny fold 1)") and "Traceback" not in message
    assert "reads other data than the driver planned on (the weights signatures differ)" in message
    assert (project.model_dir("tiny", 0) / "done.json").exists()
    assert not (project.model_dir("tiny", 1) / "done.json").exists()


@pytest.mark.slow
def test_every_node_is_probed_and_one_without_the_project_is_refused(ray_instance, tmp_path):
    project = Project.at(tmp_path)
    token = write_probe(project)
    check_nodes(ray_instance, project.root, token)  # this machine sees its own folder
    with pytest.raises(RuntimeError, match=r"^node .*: .* not the one the driver writes to .*same path"):
        check_nodes(ray_instance, project.root, "a token this folder does not hold", wait_s=0)
    assert fold_task.PROBE in os.listdir(project.models)


def test_an_unreachable_cluster_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    class NoCluster:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr("foldblend.running.ray_executor.import_ray", lambda: NoCluster)
    job = FoldJob("tiny", 0, config_from_dict({"name": "tiny"}), tmp_path / "tiny.yaml", [], tmp_path, {})
    with pytest.raises(RuntimeError, match=r"^no Ray cluster at 'auto' \(Could not find .*\): start one with "
                                           r"`ray start --head`"):
        RayExecutor(address="auto").run(Project.at(tmp_path), [job], train_here=None)


def _chatty(lines, n: int) -> float:
    from foldblend.running.ray_executor import LineSender

    emit = LineSender(lines)
    for i in range(n):
        emit(f"line {i}")
        time.sleep(0.005)
    emit.wait()
    return time.time()


def _started() -> float:
    return time.time()


@pytest.mark.slow
def test_sending_fold_lines_never_lends_the_task_cpus_to_another_fold(ray_instance):
    """Waiting on each line (ray.get) would let Ray start the next task on the CPUs of a running one."""
    ray = ray_instance
    from foldblend.running.ray_executor import FoldLines

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    lines = ray.remote(num_cpus=0)(FoldLines).remote()
    ray.get(lines.take.remote())  # up first, as the executor has it
    chatty = ray.remote(num_cpus=2)(_chatty).remote(lines, 200)  # holds both CPUs while it sends
    time.sleep(0.5)
    other = ray.remote(num_cpus=1)(_started).remote()
    chatty_end, other_start = ray.get([chatty, other])
    assert other_start >= chatty_end  # it waited for the CPUs
    assert ray.get(lines.take.remote()) == [f"line {i}" for i in range(200)]  # all of them, in order
    ray.kill(lines)
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
