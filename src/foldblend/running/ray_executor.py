"""The Ray executor: every pending fold job, of every experiment, as one Ray task on a cluster.

Each task asks for what its config needs (one GPU when it trains on CUDA; `threads + num_workers` CPUs,
or `--cpus-per-fold`), so Ray runs folds of different experiments at once wherever resources are free,
retries a task whose process or node died (the fold then resumes from its last.pt), and shows every
task by name in its dashboard. The driver (this process) shows one bar of finished folds and prints
each fold's lines as its task sends them. Ray is imported only here: the local path never loads it.

The project folder must be on a file system every node mounts at the same path; before any fold
runs, a probe on every node checks that (`fold_task.check_project`) and refuses otherwise.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from foldblend.members.signatures import read_done
from foldblend.paths import Project
from foldblend.running import fold_task
from foldblend.running.jobs import FoldJob, failed_jobs_error

INSTALL = 'pip install "foldblend[ray]"'
POLL_S = 0.5            # how often the driver collects finished tasks and fold lines
VISIBLE_WAIT_S = 30.0   # how long a network file system may take to show the driver a worker's files


def import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--executor ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def task_resources(cfg, cluster_gpus: float, cpus_per_fold: int | None = None) -> dict:
    """What one fold of `cfg` asks Ray for: a GPU when it trains on CUDA (`device: auto` trains on
    CUDA when the cluster has GPUs), and a CPU per torch thread and per loader worker.

    `cpus_per_fold` changes only what Ray reserves: the fold still trains with `cfg.threads` threads
    (`running.fold.run_fold`), so its weights do not depend on it."""
    gpu = cfg.device.startswith("cuda") or (cfg.device == "auto" and cluster_gpus > 0)
    return {"num_cpus": cpus_per_fold or cfg.threads + cfg.num_workers, "num_gpus": 1 if gpu else 0}


def task_job(job: FoldJob, resources: dict) -> FoldJob:
    """The job as a task runs it: on a GPU, `cuda:0` is the one GPU Ray made visible to the task."""
    if resources["num_gpus"] and job.cfg.device != "auto":
        return dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, device="cuda:0"))
    return job


class FoldLines:
    """Where tasks leave their fold lines until the driver takes them: a plain (not async) actor, so one
    task's lines arrive in the order it sent them."""

    def __init__(self):
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def fold_task_body(root: str, job: FoldJob, token: str, lines, progress: bool) -> dict:
    """The body of a fold's Ray task: `fold_task.run_job`, its lines sent to the driver's `FoldLines`."""
    emit = LineSender(lines)
    try:
        return fold_task.run_job(root, job, token, emit if progress else None, progress)
    finally:
        emit.wait()


class LineSender:
    """`emit` for a task: sends each line to `FoldLines` without waiting for it (a task blocked in
    `ray.get` lends its CPUs back to Ray, which would start another fold on them); `wait()` waits for
    the last one only, so the driver has every line once the task is done."""

    def __init__(self, lines):
        self.lines, self.last = lines, None

    def __call__(self, line: str) -> None:
        try:
            self.last = self.lines.put.remote(line)
        except Exception:  # the driver is gone: the line is still in this worker's log
            pass

    def wait(self) -> None:
        if self.last is not None:
            import ray

            ray.wait([self.last], timeout=10)


class RayExecutor:
    """Runs fold jobs as Ray tasks: on the cluster at `address` (`auto`: the one `ray start` began on
    this machine; `ray://host:10001`: a remote head), or, with no address and no RAY_ADDRESS, on a
    Ray instance of this machine's cores started for this run."""

    def __init__(self, address: str | None = None, cpus_per_fold: int | None = None, retries: int = 3,
                 progress: bool = True):
        self.address, self.cpus_per_fold, self.retries, self.progress = address, cpus_per_fold, retries, progress

    def run(self, project: Project, jobs: list[FoldJob], train_here: Callable[[FoldJob], object]) -> None:
        if not jobs:
            return
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            try:
                context = ray.init(address=self.address, log_to_driver=False)  # fold lines: FoldLines
            except ConnectionError as e:
                raise RuntimeError(f"no Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')!r} "
                                   f"({str(e).strip().splitlines()[0]}): start one with `ray start --head`, "
                                   f"or leave out --address and RAY_ADDRESS to start Ray on this machine") from None
            if self.progress and getattr(context, "dashboard_url", None):
                print(f"Ray dashboard: http://{context.dashboard_url}")
        try:
            self._run(ray, project, jobs, private=started and not (self.address or os.environ.get("RAY_ADDRESS")))
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, project: Project, jobs: list[FoldJob], private: bool) -> None:
        token = fold_task.write_probe(project)
        check_nodes(ray, project.root, token)
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        cluster_gpus = sum(r.get("GPU", 0) for r in nodes)
        task = ray.remote(fold_task_body)
        asks = [task_resources(job.cfg, cluster_gpus, self.cpus_per_fold) for job in jobs]
        for job, resources in zip(jobs, asks):  # before any task starts
            _check_feasible(job, resources, nodes, private)
        lines = ray.remote(num_cpus=0)(FoldLines).options(scheduling_strategy=on_this_node(ray)).remote()
        ray.get(lines.take.remote())  # up before any task: a task's lines wait in it until then, and die with it
        refs = {}
        for job, resources in zip(jobs, asks):
            ref = task.options(name=job.label, max_retries=self.retries, **resources).remote(
                str(project.root), task_job(job, resources), token, lines, self.progress)
            refs[ref] = job
        failed: list[tuple[FoldJob, str]] = []
        bar = tqdm(total=len(jobs), desc="folds", unit="fold", disable=not self.progress)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                _print_lines(ray, lines, bar)
                for ref in done:
                    job = refs[ref]
                    try:
                        ray.get(ref)
                        _check_written(job)
                    except Exception as e:  # one fold failing must not stop the others
                        failed.append((job, _reason(e).removeprefix(f"[{job.label}] ")))
                        bar.write(f"[{job.label}] failed: {failed[-1][1]}")
                    bar.update()
            _print_lines(ray, lines, bar)
        except BaseException:
            for ref in pending:  # interrupted: stop the folds still running (they resume on the next run)
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
            ray.kill(lines)
        if failed:
            raise failed_jobs_error(failed)


def on_this_node(ray):
    """Scheduling on the driver's node: the fold lines' actor lives as long as the driver, not as long as
    a worker node that may leave mid-run (its folds are retried elsewhere; their lines must stay).

    Not `soft`: Ray then places a zero-CPU actor on another node when the driver's has no CPUs (a head
    node kept for drivers), and a multi-node test lost the actor with that node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # a driver without a node of its own (Ray Client): anywhere
        return "DEFAULT"
    return NodeAffinitySchedulingStrategy(node, soft=False)


def check_nodes(ray, root: Path, token: str, wait_s: float = 10.0) -> None:
    """Every node that can run a fold must see this project folder: refuse before training otherwise."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(fold_task.check_project)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    refs = {probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(str(root), token, wait_s): n for n in nodes}
    problems = []
    for ref, node in refs.items():
        try:
            ray.get(ref)
        except Exception as e:
            problems.append(f"node {node.get('NodeManagerAddress', node['NodeID'])}: {_reason(e)}")
    if problems:
        raise RuntimeError("; ".join(problems))


def _check_feasible(job: FoldJob, resources: dict, nodes: list[dict], private: bool) -> None:
    """A task no node can hold would wait forever: say so (and refuse on a private instance, which
    never grows; a cluster with an autoscaler may still add such a node)."""
    fits = any(r.get("CPU", 0) >= resources["num_cpus"] and r.get("GPU", 0) >= resources["num_gpus"] for r in nodes)
    if fits:
        return
    need = f"{resources['num_cpus']} CPU(s)" + (" and a GPU" if resources["num_gpus"] else "")
    msg = (f"[{job.label}] asks for {need} and no node of the Ray cluster has that "
           f"(lower --cpus-per-fold, which leaves the fold's threads as they are, or num_workers, set "
           f"device: cpu, or add such a node)")
    if private:
        raise RuntimeError(msg)
    print(f"WARNING {msg}: it waits until one joins")


def _check_written(job: FoldJob) -> None:
    """The task said it finished: its done.json must be here too, or the folder is not shared."""
    deadline = time.monotonic() + VISIBLE_WAIT_S
    while read_done(job.out_dir).get("signature") != job.signature:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"it finished on a worker, but its {job.out_dir}/done.json is not visible to "
                               f"the driver: {fold_task.SHARED_FS}")
        time.sleep(POLL_S)


def _print_lines(ray, lines, bar) -> None:
    for line in ray.get(lines.take.remote()):
        bar.write(line)


def _reason(e: Exception) -> str:
    """One line for a task's failure: the original error's message, not Ray's wrapped traceback."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, (ValueError, FileNotFoundError, RuntimeError)) and not os.environ.get("FOLDBLEND_DEBUG"):
        return str(cause)
    if cause is not None and not os.environ.get("FOLDBLEND_DEBUG"):
        return f"{type(cause).__name__}: {cause}"
    text = str(e)
    return text if os.environ.get("FOLDBLEND_DEBUG") else text.strip().splitlines()[-1]
