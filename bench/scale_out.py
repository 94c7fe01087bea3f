"""Scale-out: the same fold jobs on the local executor and on a local Ray cluster of 1 and of 2 CPU workers.

Generates a small competition (shapes, glyphs and textures in two styles, PNG and JPEG of mixed sizes)
in a temporary folder, plans two experiments x `--folds` folds, and times only the executor's `run`
over the same job list, three ways, in one run:
  local   the local executor, folds in sequence in this process, torch at one thread
  ray x1  a Ray instance with 1 CPU: the same folds one after another as Ray tasks (one thread each)
  ray x2  a Ray instance with 2 CPUs: two folds at a time
Each is timed `--rounds` times, alternating, and the fastest kept (the machine may be shared). The Ray
worker processes are started (importing torch) before the timing, as a cluster does once per worker,
and that time is printed apart with Ray's own start-up. The per-fold scheduling overhead is
(ray x1 - local) / folds: dispatching the task, its reload of the cached data, the probe of every
node and the line queue. The three runs' predictions are compared, as they must be identical. What 2 workers can gain
is bounded by the machine: each round also times two plain one-thread torch processes against one.

    PYTHONPATH=src python bench/scale_out.py                 # ~8 min on 2 CPU cores
    PYTHONPATH=src python bench/scale_out.py --folds 5 --epochs 3 --img-size 48
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from foldblend.paths import Project
from foldblend.running.experiment import plan_experiment
from foldblend.running.fold import run_fold
from foldblend.running.local import LocalExecutor
from foldblend.running.ray_executor import RayExecutor, import_ray
from foldblend.stages.folds import run_folds

CLASSES = ["disc", "box", "glyph", "stripes"]


def draw(kind: str, style: int, rng: np.random.Generator) -> np.ndarray:
    """One image of `kind`; style 0 is flat colour on light paper, style 1 noisy colour on dark."""
    h, w = (int(v) for v in rng.integers(24, 49, 2))
    bg = rng.integers(200, 256, 3) if style == 0 else rng.integers(0, 60, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    r = int(min(h, w) * rng.uniform(0.2, 0.35))
    cx, cy = int(rng.integers(r, w - r + 1)), int(rng.integers(r, h - r + 1))
    if kind == "disc":
        cv2.circle(img, (cx, cy), r, colour, -1)
    elif kind == "box":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), colour, -1)
    elif kind == "glyph":
        letter = "AKXZ"[int(rng.integers(0, 4))]
        cv2.putText(img, letter, (cx - r, cy + r), cv2.FONT_HERSHEY_SIMPLEX, r / 12, colour, 2)
    else:  # stripes at a random angle, period and phase
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 8), rng.uniform(0, 8)
        yy, xx = np.mgrid[0:h, 0:w]
        img[((xx * np.cos(angle) + yy * np.sin(angle) + phase) // period) % 2 == 0] = colour
    if style == 1:
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    return img


def make_competition(root: Path, per_class: int, n_test: int, n_folds: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c, kind in enumerate(CLASSES):
        folder = root / "input/train" / kind
        folder.mkdir(parents=True)
        for i in range(per_class):
            suffix = ".png" if i % 3 else ".jpg"
            cv2.imwrite(str(folder / f"{kind}_{i:04d}{suffix}"), draw(kind, i % 2, rng))
    (root / "input/test").mkdir(parents=True)
    ids = []
    for j in range(n_test):
        ids.append(f"t{j:04d}.png")
        cv2.imwrite(str(root / "input/test" / ids[-1]), draw(CLASSES[j % len(CLASSES)], j % 2, rng))
    (root / "input/sample_submission.csv").write_text("id,label\n" + "".join(f"{i},disc\n" for i in ids))
    (root / "input/competition.yaml").write_text(f"n_splits: {n_folds}\n")
    (root / "folds").mkdir()


def _import_training_stack() -> int:
    importlib.import_module("foldblend.running.experiment")  # torch, timm, albumentations, OpenCV

    time.sleep(0.5)  # hold this worker, so that each warm-up task gets a process of its own
    return os.getpid()


def warm_up(ray, workers: int) -> None:
    """Start the task worker processes before timing: a cluster pays this once per worker, not per fold."""
    task = ray.remote(num_cpus=1)(_import_training_stack)
    ray.get([task.remote() for _ in range(workers)])


PLAIN_WORK = """
import time, torch
torch.set_num_threads(1)
x = torch.randn(256, 256)
t0 = time.perf_counter()
for _ in range(1500):
    x = torch.tanh(x @ x * 0.01)
print(time.perf_counter() - t0)
"""


def machine_parallelism() -> float:
    """Throughput of two plain one-thread torch processes at once over one alone: the most 2 workers can
    gain on this machine right now (below 2 when other work shares its cores)."""
    def seconds(n: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", PLAIN_WORK], stdout=subprocess.PIPE, text=True)
                 for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    return 2 * seconds(1) / seconds(2)


def timed_run(executor, project: Project, plans) -> float:
    by_name = {p.cfg.name: p for p in plans}

    def train_here(job):
        plan = by_name[job.name]
        return run_fold(plan.cfg, job.fold, plan.data, job.out_dir, progress=False)

    jobs = [job for plan in plans for job in plan.jobs]
    t0 = time.perf_counter()
    executor.run(project, jobs, train_here)
    return time.perf_counter() - t0


def predictions(project: Project, plans) -> list[np.ndarray]:
    out = []
    for job in (job for plan in plans for job in plan.jobs):
        with np.load(job.out_dir / "preds.npz") as z:
            out.append(z["val_logits"])
    return out


def clear(project: Project, plans) -> None:
    for plan in plans:
        shutil.rmtree(project.models / plan.cfg.name, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=4, help="folds per experiment (two experiments)")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="each way is timed this many times; the fastest is kept")
    args = ap.parse_args()
    ray = import_ray()

    with tempfile.TemporaryDirectory(prefix="scale_out_") as tmp:
        root = Path(tmp) / "project"
        make_competition(root, args.per_class, n_test=40, n_folds=args.folds)
        project = Project.at(root)
        with contextlib.redirect_stdout(io.StringIO()):  # the split's report: not what is measured
            run_folds(project, progress=False)
        base = (f"model: cnn_tiny\nimg_size: {args.img_size}\nepochs: {args.epochs}\nbatch_size: 32\n"
                f"augment: light\ntta: [identity, hflip]\ndevice: cpu\nthreads: 1\n")  # one CPU per Ray task
        (project.folds_dir / "small.yaml").write_text(base)
        (project.folds_dir / "wide.yaml").write_text(base.replace("augment: light", "augment: medium") + "lr: 0.01\n")
        configs = sorted(project.folds_dir.glob("*.yaml"))
        plans = [plan_experiment(c, project, progress=False) for c in configs]
        n = sum(len(p.jobs) for p in plans)
        print(f"{n} fold jobs: 2 experiments x {args.folds} folds, cnn_tiny at {args.img_size} px, "
              f"{args.epochs} epoch(s), {args.per_class * len(CLASSES)} train images")

        local_s, results, init_s, start_s, same = [], {1: [], 2: []}, {1: [], 2: []}, {1: [], 2: []}, True
        parallel = []
        for r in range(args.rounds):
            parallel.append(machine_parallelism())
            print(f"round {r + 1}: two plain processes at once do {parallel[-1]:.2f}x the work of one")
            clear(project, plans)
            local_s.append(timed_run(LocalExecutor(), project, plans))  # each fold at the config's `threads: 1`
            reference = predictions(project, plans)
            print(f"round {r + 1}: local executor (in sequence, 1 thread) {local_s[-1]:.1f} s")
            for cpus in (1, 2):
                clear(project, plans)
                with tempfile.TemporaryDirectory(prefix="ray") as ray_tmp:  # short: Ray's sockets live there
                    t0 = time.perf_counter()
                    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
                    init_s[cpus].append(time.perf_counter() - t0)
                    try:
                        t0 = time.perf_counter()
                        warm_up(ray, cpus)
                        start_s[cpus].append(time.perf_counter() - t0)
                        results[cpus].append(timed_run(RayExecutor(progress=False), project, plans))
                    finally:
                        ray.shutdown()
                same &= all(np.array_equal(a, b) for a, b in zip(reference, predictions(project, plans)))
                print(f"round {r + 1}: ray x{cpus} ({cpus} CPU worker(s)) {results[cpus][-1]:.1f} s "
                      f"(+ ray.init {init_s[cpus][-1]:.1f} s, worker start {start_s[cpus][-1]:.1f} s)")

        local = min(local_s)
        best = {cpus: min(walls) for cpus, walls in results.items()}
        overhead = (best[1] - local) / n
        print(f"\nfastest of {args.rounds} round(s); predictions identical in every run: {'yes' if same else 'NO'}")
        print("| run | wall s | per fold s | ratio vs local |")
        print("|---|---|---|---|")
        print(f"| local executor, in sequence | {local:.1f} | {local / n:.2f} | 1.00 |")
        for cpus, wall in best.items():
            print(f"| ray, {cpus} CPU worker(s) | {wall:.1f} | {wall / n:.2f} | {wall / local:.2f} |")
        print(f"scheduling overhead per fold, (ray x1 - local) / {n}: {overhead:.2f} s "
              f"= {overhead / (local / n):.2f} x a local fold's time")
        print(f"speed-up of 2 workers over 1: {best[1] / best[2]:.2f}x; the machine offered two plain "
              f"processes {min(parallel):.2f}-{max(parallel):.2f}x in the same run")
        print(f"once per run, not in the above: ray.init {min(init_s[1] + init_s[2]):.1f} s; starting the "
              f"workers (a process importing torch and foldblend) {min(start_s[1]):.1f} s for 1, "
              f"{min(start_s[2]):.1f} s for 2")

if __name__ == "__main__":
    main()
