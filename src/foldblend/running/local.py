"""The local executor: the pending fold jobs in this process, or one process per device.

Jobs run in sequence here when there is one device (or one job); with several devices
(`devices=["cuda:0", "cuda:1"]`, or two "cpu" workers, which exercise the same path without a GPU)
each job runs as its own `foldblend train CONFIG --folds k` process on the next free device, so folds
of different experiments share the devices too.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from foldblend.paths import Project
from foldblend.running.jobs import FoldJob, failed_jobs_error

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(device: str, n_workers: int, base: dict | None = None) -> tuple[dict, str]:
    """(environment, device name inside the worker) for one fold process.

    Each worker gets its share of the CPU cores for what runs outside a fold's training (OpenMP and BLAS
    would otherwise each start one thread per core in every process: n_workers x cores threads fighting
    over the cores); the fold itself trains with its config's `threads`, as in this process and on Ray
    (`running.fold.run_fold`), so that its weights do not depend on the number of workers. A CUDA worker
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


class LocalExecutor:
    """Runs fold jobs on this machine: `devices` None or one device -> in this process, in order."""

    def __init__(self, devices: list[str] | None = None):
        self.devices = list(devices or [])

    def run(self, project: Project, jobs: list[FoldJob], train_here: Callable[[FoldJob], object]) -> None:
        if len(self.devices) > 1 and len(jobs) > 1:
            run_on_devices(project, jobs, self.devices)
        else:
            for job in jobs:
                train_here(job)


def run_on_devices(project: Project, jobs: list[FoldJob], devices: list[str]) -> None:
    """One job per device at a time, each in its own process; jobs queue for the next free device."""
    free: queue.Queue[str] = queue.Queue()
    for dev in devices:
        free.put(dev)

    def one(job: FoldJob) -> int:
        dev = free.get()
        try:
            env, worker_device = worker_env(dev, len(devices))
            # the worker's device goes last: it wins over a `device=` in the user's overrides
            sets = [*job.overrides, f"device={worker_device}"]
            cmd = [sys.executable, "-m", "foldblend.cli", "--root", str(project.root), "train",
                   str(Path(job.config_path).resolve()), "--folds", str(job.fold), "--no-assemble", "--quiet"] \
                + [a for o in sets for a in ("--set", o)]
            print(f"[{job.label}] on {dev}", flush=True)
            return subprocess.run(cmd, env=env).returncode
        finally:
            free.put(dev)

    with ThreadPoolExecutor(len(devices)) as pool:
        codes = list(pool.map(one, jobs))
    failed = [(job, f"its worker process exited with status {c} (see its output above)")
              for job, c in zip(jobs, codes) if c != 0]
    if failed:
        raise failed_jobs_error(failed)
