"""`foldblend <stage>`: each stage's own arguments and `run`, collected here. `run.sh` only chains stages.

Only the stage being run is imported (its arguments and its libraries), so `foldblend summary` does not pay
for torch and `foldblend --help` lists every stage without importing any of them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from foldblend.errors import os_error_line
from foldblend.paths import Project

# one row per `foldblend <command>`: its module is `foldblend.stages.<command>`
STAGES = {
    "demo": "build the demo competition in input/ if input/ is empty",
    "scan": "read every image once: unreadable files, duplicates, out-of-domain, EDA",
    "folds": "write folds/folds.csv (stratified, grouped over duplicates)",
    "init": "write fold configs chosen for this data and machine (never over existing ones without --force)",
    "train": "train fold configs and write oof/<exp>/ (finished folds are skipped)",
    "blend": "ensemble every experiment in oof/ (or --members) on OOF",
    "submit": "write submissions/<name>_cv<score>.csv in the sample's format",
    "summary": "CV of every experiment and blend, and the latest submission",
    "report": "write oof/report.html: CV, curves, blend, per-class F1, confusions, mistakes",
    "evaluate": "classification_report of an experiment or the blend on a labelled folder",
    "predict": "predict image files or folders (CSV with top-k classes)",
    "export": "write an experiment or the blend as a self-contained bundle folder",
    "serve": "a local web page to try the models on your own images (and its HTTP API)",
}


def stage_module(name: str):
    return importlib.import_module(f"foldblend.stages.{name}")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Every stage as a sub-command; the arguments of the stage named in `argv` (all of them when None)."""
    chosen = None if argv is None else next((a for a in argv if a in STAGES), "")
    p = argparse.ArgumentParser(prog="foldblend", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=".", help="project folder holding input/ folds/ models/ oof/ submissions/")
    sub = p.add_subparsers(dest="stage", required=True)
    for name, help_text in STAGES.items():
        s = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is None or name == chosen:
            stage = stage_module(name)
            stage.add_arguments(s)
            s.set_defaults(fn=stage.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    project = Project.at(args.root)
    try:
        args.fn(args, project)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:  # FoldblendError is a ValueError
        if os.environ.get("FOLDBLEND_DEBUG"):
            raise

        line = os_error_line(e) if isinstance(e, OSError) else " ".join(str(e).split())
        print(f"foldblend {args.stage}: error: {line}\n(set FOLDBLEND_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
