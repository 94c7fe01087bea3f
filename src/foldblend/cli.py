"""`foldblend <stage>`: a thin shell around each stage's function. `run.sh` only chains these."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


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


def cmd_demo(args, project):
    from .data.demo import build_demo, is_demo_complete, is_empty_input, write_demo_configs

    if is_empty_input(project.input) or args.force or (project.input / ".demo_complete").exists() and not \
            is_demo_complete(project.input):
        print(f"building the demo competition (scikit-learn digits) in {project.input.name}/")
        build_demo(project.input, seed=args.seed)
        written = write_demo_configs(project.folds_dir)
        folder = project.rel(project.folds_dir)
        print(f"wrote the demo's fold configs: {', '.join(f'{folder}/{n}' for n in written)}" if written else
              f"{folder}/ already holds fold configs: the demo's are not written")
    else:
        print(f"{project.input.name}/ already holds a competition: the demo is not built")


def cmd_scan(args, project):
    from .data.scan import run_scan

    run_scan(project, workers=args.workers, progress=not args.quiet)


def cmd_folds(args, project):
    from .data.folds import run_folds

    run_folds(project, progress=not args.quiet, holdout=args.holdout)


def cmd_init(args, project):
    from .recipes.init import run_init

    run_init(project, preset=args.preset, time_limit=args.time_limit, device=args.device, online=args.online,
             force=args.force, do_probe=not args.no_probe, progress=not args.quiet)


def visible_gpus() -> list[str] | None:
    """Every CUDA device when there are several (folds then run one per GPU); None otherwise."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(n)] if n > 1 else None


def make_executor(args):
    """The executor `--executor` names; None is the local one (the Ray module loads only when asked for)."""
    if args.executor == "local":
        if args.address is not None or args.cpus_per_fold is not None:
            raise ValueError("--address and --cpus-per-fold belong to --executor ray")
        return None
    if args.gpus is not None:
        raise ValueError("--gpus chooses local devices; with --executor ray each fold asks Ray for a GPU")
    from .running.ray_executor import RayExecutor, import_ray

    import_ray()  # not installed: one line naming the install command, before any data is loaded
    return RayExecutor(address=args.address, cpus_per_fold=args.cpus_per_fold, progress=not args.quiet)


def cmd_train(args, project):
    from .running.experiment import train_experiments

    configs = args.configs or sorted(p for p in project.folds_dir.glob("*.yaml"))
    if not configs:
        sys.exit(f"no fold configs: put <experiment>.yaml files in {project.folds_dir.name}/ or name one")
    start = time.time()
    executor = make_executor(args)
    devices = None
    if executor is None:
        devices = args.gpus if args.gpus is not None else visible_gpus()
        if devices and len(devices) > 1:
            print(f"training folds concurrently on {', '.join(devices)} (one fold per device; --gpus to choose)")
    train_experiments(configs, project, executor=executor, folds=args.folds, overrides=args.set, devices=devices,
                      assemble=not args.no_assemble, progress=not args.quiet)
    if not args.configs and args.folds is None and not args.set:  # every fold config ran as it stands
        from .running.experiment import remove_unused_caches

        remove_unused_caches(project, since=start - 1)


def cmd_blend(args, project):
    from .ensemble.blend import blend_from_args

    blend_from_args(args, project)


def cmd_submit(args, project):
    from .data.find import load_competition
    from .outputs.submit import submit_from_args

    submit_from_args(args, project, load_competition(project.input))


def cmd_summary(args, project):
    from .outputs.summary import print_summary

    print_summary(project)


def build_parser() -> argparse.ArgumentParser:
    from .ensemble.blend import add_blend_arguments
    from .outputs.submit import add_submit_arguments

    p = argparse.ArgumentParser(prog="foldblend", description=__doc__)
    p.add_argument("--root", default=".", help="project folder holding input/ folds/ models/ oof/ submissions/")
    sub = p.add_subparsers(dest="stage", required=True)

    s = sub.add_parser("demo", help="build the demo competition in input/ if input/ is empty")
    s.add_argument("--force", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("scan", help="read every image once: unreadable files, duplicates, out-of-domain, EDA")
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_scan)

    s = sub.add_parser("folds", help="write folds/folds.csv (stratified, grouped over duplicates)")
    s.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="set aside this fraction as a held-out test split (fold -1); overrides competition.yaml, "
                        "and is kept by later runs until changed (0 removes it)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_folds)

    from .recipes.presets import DEFAULT_PRESET, PRESETS

    s = sub.add_parser("init", help="write fold configs chosen for this data and machine (never over existing "
                                    "ones without --force)")
    s.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                   help="fast: few, cheap members; medium: adds a pretrained fine-tune and more; best: larger sizes, "
                        "more updates (default: %(default)s)")
    s.add_argument("--time-limit", default=None, metavar="DURATION",
                   help="fit what follows the split (the probe, training, the blend) into this: 2h, 90m, 1h30m, "
                        "or seconds; a timed probe sizes epochs and the number of members")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="the device the configs are for (default: this machine's); cuda without a GPU here writes "
                        "GPU configs untimed")
    online = s.add_mutually_exclusive_group()
    online.add_argument("--online", dest="online", action="store_true", default=None,
                        help="use timm hub weights (default: when the hub answers)")
    online.add_argument("--offline", dest="online", action="store_false", help="use packaged weights only")
    s.add_argument("--no-probe", action="store_true", help="write the preset's epochs without timing anything")
    s.add_argument("--force", action="store_true", help="write even though folds/ holds fold configs "
                                                        "(same names are replaced)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("train", help="train fold configs and write oof/<exp>/ (finished folds are skipped)")
    s.add_argument("configs", nargs="*", type=Path, help="fold configs (default: every folds/*.yaml)")
    s.add_argument("--folds", type=_folds_arg, default=None, help="only these folds, e.g. 0,2")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--gpus", type=_devices_arg, default=None,
                   help="run folds concurrently, one per device: 0,1 (CUDA) or cpu,cpu "
                        "(default: every GPU when there are several)")
    s.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine (default); ray: every fold of every config as a Ray task "
                        "(needs foldblend[ray] and the project on a shared file system)")
    s.add_argument("--address", default=None,
                   help="with --executor ray: the cluster, `auto` (started here with `ray start`) or "
                        "ray://HEAD:10001 (default: RAY_ADDRESS, else a Ray instance of this machine)")
    s.add_argument("--cpus-per-fold", type=_positive_int, default=None, metavar="N",
                   help="with --executor ray: CPUs each fold asks for (default: 1 + the config's num_workers)")
    s.add_argument("--no-assemble", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("blend", help="ensemble every experiment in oof/ (or --members) on OOF")
    add_blend_arguments(s)
    s.set_defaults(fn=cmd_blend)

    s = sub.add_parser("submit", help="write submissions/<name>_cv<score>.csv in the sample's format")
    add_submit_arguments(s)
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("summary", help="CV of every experiment and blend, and the latest submission")
    s.set_defaults(fn=cmd_summary)

    from .outputs.evaluate import add_evaluate_arguments, evaluate_from_args
    from .outputs.predict import add_predict_arguments, predict_from_args
    from .outputs.report import add_report_arguments, report_from_args

    s = sub.add_parser("evaluate", help="classification_report of an experiment or the blend on a labelled folder")
    add_evaluate_arguments(s)
    s.set_defaults(fn=evaluate_from_args)

    s = sub.add_parser("predict", help="predict image files or folders (CSV with top-k classes)")
    add_predict_arguments(s)
    s.set_defaults(fn=predict_from_args)

    from .outputs.export import add_export_arguments, export_from_args

    s = sub.add_parser("export", help="write an experiment or the blend as a self-contained bundle folder")
    add_export_arguments(s)
    s.set_defaults(fn=export_from_args)

    s = sub.add_parser("report", help="write oof/report.html: CV, curves, blend, per-class F1, confusions, mistakes")
    add_report_arguments(s)
    s.set_defaults(fn=report_from_args)

    from .outputs.serve import add_serve_arguments, serve_from_args

    s = sub.add_parser("serve", help="a local web page to try the models on your own images (and its HTTP API)")
    add_serve_arguments(s)
    s.set_defaults(fn=serve_from_args)
    return p


def main(argv: list[str] | None = None) -> int:
    from .paths import Project

    args = build_parser().parse_args(argv)
    project = Project.at(args.root)
    try:
        args.fn(args, project)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:  # FoldblendError is a ValueError
        if os.environ.get("FOLDBLEND_DEBUG"):
            raise
        from .errors import os_error_line

        line = os_error_line(e) if isinstance(e, OSError) else " ".join(str(e).split())
        print(f"foldblend {args.stage}: error: {line}\n(set FOLDBLEND_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
