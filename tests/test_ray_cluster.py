"""The Ray executor on a real multi-node cluster (`ray.cluster_utils.Cluster`, all nodes on this machine).

A head node with no CPUs (the driver and the fold lines' actor live there) and two worker nodes of two
CPUs each, every node its own raylet with its own resources: each fold asks for two CPUs (`threads: 2`),
so the folds of two experiments spread over both worker nodes. One worker node is removed while it
trains a fold: Ray retries that fold's task on the other node, where it resumes from its last.pt, every
fold finishes, and the members are the local executor's, bit for bit.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG
from test_ray_executor import _last_epoch, _local, _project, assert_same_fold

from foldblend.running.experiment import train_experiments
from foldblend.running.ray_executor import RayExecutor

EPOCHS = 6  # the folds of the experiment whose node is removed: a window after the second epoch
DEEP = TINY_CONFIG.replace("cnn_tiny", "resnet10t").replace("epochs: 1", f"epochs: {EPOCHS}")
CONFIGS = {"deep": DEEP, "quick": TINY_CONFIG}


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(parent, []).append(int(entry))
    return kids


def _descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


class NodeWatch(threading.Thread):
    """Which worker node runs which fold (a fold task is a process `ray::<exp> fold <k>` under the node's
    raylet); once a `victim` fold has finished two epochs, its process is stopped (so it is still mid-fold)
    and its node removed from the cluster."""

    def __init__(self, cluster, nodes: list, project, victim: str):
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.project, self.victim = cluster, nodes, project, victim
        self.ran_on: dict[str, set[int]] = {}   # fold label -> indices of the nodes it ran on
        self.removed: dict | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                self._look()
                time.sleep(0.05)
        except BaseException as e:  # reported by the test
            self.error = e

    def _look(self) -> None:
        kids = _children()
        for i, node in enumerate(self.nodes):
            if self.removed and self.removed["node"] == i:
                continue
            for pid in _descendants(node.all_processes["raylet"][0].process.pid, kids):
                title = _title(pid)
                if not (title.startswith("ray::") and " fold " in title):
                    continue
                label = title.removeprefix("ray::")
                self.ran_on.setdefault(label, set()).add(i)
                exp, k = label.split(" fold ")
                out = self.project.model_dir(exp, int(k))
                if self.removed is None and exp == self.victim and _last_epoch(out) >= 1:
                    os.kill(pid, signal.SIGSTOP)  # mid-fold for sure: it cannot finish while its node goes
                    epoch = _last_epoch(out)
                    self.cluster.remove_node(node)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.removed = {"label": label, "epoch": epoch, "node": i, "pid": pid}
                    return


@pytest.fixture
def cluster():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="fbclu")  # short: Ray's unix sockets live under it (107-byte limit)
    # Ray (2.60) writes the cluster's address into its default temp folder whatever temp_dir says, and does not
    # create that folder: on a machine where Ray never ran, Cluster() fails with FileNotFoundError
    from ray._private.utils import get_ray_address_file

    Path(get_ray_address_file(None)).parent.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp,
                                                            "include_dashboard": False})
    # the driver joins before the worker nodes exist: all nodes share this machine's address, and a driver
    # joining later may attach to any of them (then removing that node would end the driver)
    ray.init(address=cluster.address, log_to_driver=False)
    workers = [cluster.add_node(num_cpus=2, temp_dir=temp) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the fold tasks' processes in /proc")
def test_folds_spread_over_nodes_survive_a_removed_node_and_match_the_local_executor(cluster, tmp_path, capsys):
    cluster, workers = cluster
    project = _project(tmp_path, CONFIGS)
    configs = sorted(project.folds_dir.glob("*.yaml"))
    watch = NodeWatch(cluster, workers, project, victim="deep")
    watch.start()
    try:
        scores = train_experiments(configs, project, executor=RayExecutor(progress=True))
    finally:
        watch.done.set()
        watch.join()
    lines = capsys.readouterr().out
    assert watch.error is None, watch.error
    removed = watch.removed
    assert removed is not None, f"no node was removed mid-fold (folds seen: {watch.ran_on})"
    assert 1 <= removed["epoch"] < EPOCHS - 1, removed

    # the folds of both experiments ran, on both worker nodes
    assert sorted(watch.ran_on) == ["deep fold 0", "deep fold 1", "quick fold 0", "quick fold 1"], watch.ran_on
    assert set().union(*watch.ran_on.values()) == {0, 1}
    # the removed node's fold was retried on the other node and resumed from its last.pt
    label = removed["label"]
    assert watch.ran_on[label] == {0, 1}
    starts = [line for line in lines.splitlines() if line.startswith(f"[{label}] on ")]
    assert len(starts) == 2 and f"pid {removed['pid']}," in starts[0] and f"pid {removed['pid']}," not in starts[1]
    assert f"[{label}] resuming after epoch {removed['epoch'] + 1}" in lines
    exp, k = label.split(" fold ")
    assert list(pd.read_csv(project.model_dir(exp, int(k)) / "log.csv")["epoch"]) == list(range(1, EPOCHS + 1))
    # every fold finished and both members were assembled
    assert all(scores[name] is not None for name in CONFIGS)
    ray_run = tmp_path / "ray_run"
    (ray_run / "models").mkdir(parents=True)
    (ray_run / "oof").mkdir()
    for name in CONFIGS:
        shutil.move(project.models / name, ray_run / "models" / name)
        shutil.move(project.oof_dir(name), ray_run / "oof" / name)

    # the local executor, from scratch in a driver at another thread count: the same folds and members
    _local(project, configs)
    for name in CONFIGS:
        for k in (0, 1):
            assert_same_fold(ray_run / "models" / name / f"fold_{k}", project.model_dir(name, k))
        for member in ("oof.npz", "test.npz"):
            with np.load(ray_run / "oof" / name / member) as a, np.load(project.oof_dir(name) / member) as b:
                np.testing.assert_array_equal(a["logits"], b["logits"])
        ray_scores, local_scores = (json.loads((d / "scores.json").read_text())
                                    for d in (ray_run / "oof" / name, project.oof_dir(name)))
        ray_scores.pop("stamp"), local_scores.pop("stamp")  # digests of zip files that carry a time
        assert ray_scores == local_scores
