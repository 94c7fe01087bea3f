"""`foldblend train`: every fold config's pending folds trained, on this machine or a Ray cluster.

Which folds are pending, the locks and the member files are `running.experiment`'s; this stage chooses the
executor (local processes, one per device, or Ray) from its arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from foldblend.artifacts import read_json, write_json
from foldblend.durations import format_duration, parse_duration
from foldblend.paths import Project
from foldblend.running.experiment import remove_unused_caches, train_experiments
from foldblend.running.ray_executor import RayExecutor, import_ray


def _folds_arg(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds expects comma-separated fold numbers like 0,2; got {text!r}")


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expects a whole number of at least 1; got {text!r}")
    return int(text)


def _devices_arg(text: str) -> list[str]:
    """`0,1` -> cuda:0, cuda:1; `cpu,cpu` -> two CPU workers."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        out.append(f"cuda:{part}" if part.isdigit() else part)
    return out


def visible_gpus() -> list[str] | None:
    """Every CUDA device when there are several (folds then run one per GPU); None otherwise."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] if n > 1 else None


def time_limit(args: argparse.Namespace, project: Project, started: float) -> dict | None:
    """The limit training holds from `started` (time.monotonic): --time-limit, else init's (what it left for
    training) when every fold config is trained as it stands; with init's estimates, and where the keeper
    writes what it decided."""
    record = read_json(project.init_record) or {}
    if args.time_limit is not None and args.time_limit.strip().lower() == "none":
        return None
    if args.time_limit is not None:
        seconds = parse_duration(args.time_limit)
        print(f"time limit: {format_duration(seconds)} for training (--time-limit {args.time_limit})")
    elif record.get("usable_s") is not None and not (args.configs or args.folds is not None or args.set):
        seconds = max(float(record["usable_s"]), 0.0)
        print(f"time limit: {format_duration(seconds)} for training, what `{record.get('command', 'foldblend init')}` "
              f"left after its probe and a reserve for the blend (folds/init.json; --time-limit none trains without)"
              + ("; nothing is left, so training ends over it: the trials, then the cheapest member"
                 if seconds == 0 else ""))
    else:
        return None
    members = {name: m for name, m in (record.get("members") or {}).items() if m.get("estimate_s") is not None}
    n_folds = max(1, (record.get("data") or {}).get("n_folds", 1))
    # a head's later folds: its estimate without the features (and decode) its first fold pays for
    later = {name: (m["estimate_s"] - sum((m.get("parts") or {}).get(k, 0.0) for k in ("features", "decode"))) / n_folds
             for name, m in members.items() if m.get("role") == "embedding head"}

    def save(kept: dict) -> None:
        current = read_json(project.init_record) or {}
        write_json(project.init_record, {**current, "train": kept})

    return {"seconds": seconds, "started": started, "estimates": {n: m["estimate_s"] for n, m in members.items()},
            "fold_estimates": later, "save": save}


def make_executor(args):
    """The executor `--executor` names; None is the local one (the Ray module loads only when asked for)."""
    if args.executor == "local":
        if args.address is not None or args.cpus_per_fold is not None:
            raise ValueError("--address and --cpus-per-fold belong to --executor ray")
        return None
    if args.gpus is not None:
        raise ValueError("--gpus chooses local devices; with --executor ray each fold asks Ray for a GPU")

    import_ray()  # not installed: one line naming the install command, before any data is loaded
    return RayExecutor(address=args.address, cpus_per_fold=args.cpus_per_fold, progress=not args.quiet)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", type=Path, help="fold configs (default: every folds/*.yaml)")
    parser.add_argument("--folds", type=_folds_arg, default=None, help="only these folds, e.g. 0,2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--gpus", type=_devices_arg, default=None,
                        help="run folds concurrently, one per device: 0,1 (CUDA) or cpu,cpu "
                             "(default: every GPU when there are several)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: this machine (default); ray: every fold of every config as a Ray task "
                             "(needs foldblend[ray] and the project on a shared file system)")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: the cluster, `auto` (started here with `ray start`) or "
                             "ray://HEAD:10001 (default: RAY_ADDRESS, else a Ray instance of this machine)")
    parser.add_argument("--cpus-per-fold", type=_positive_int, default=None, metavar="N",
                        help="with --executor ray: CPUs each fold asks Ray for (default: the config's threads + "
                             "num_workers); how the fold trains stays the config's `threads`")
    parser.add_argument("--time-limit", default=None, metavar="DURATION",
                        help="hold training within this (2h, 90m, seconds): every member's trial on fold 0 first, "
                             "then the time to the members that scored best, re-planned after every epoch; `none` "
                             "trains without one (default: what `foldblend init --time-limit` left for training, "
                             "when every fold config is trained)")
    parser.add_argument("--no-assemble", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace, project: Project) -> None:
    configs = args.configs or sorted(p for p in project.folds_dir.glob("*.yaml"))
    if not configs:
        sys.exit(f"no fold configs: put <experiment>.yaml files in {project.folds_dir.name}/ or name one")
    start, started = time.time(), time.monotonic()
    executor = make_executor(args)
    devices = None
    if executor is None:
        devices = args.gpus if args.gpus is not None else visible_gpus()
        if devices and len(devices) > 1:
            print(f"training folds concurrently on {', '.join(devices)} (one fold per device; --gpus to choose)")
    limit = time_limit(args, project, started)
    train_experiments(configs, project, executor=executor, folds=args.folds, overrides=args.set, devices=devices,
                      assemble=not args.no_assemble, progress=not args.quiet, time_limit=limit)
    if not args.configs and args.folds is None and not args.set:  # every fold config ran as it stands
        remove_unused_caches(project, since=start - 1)
