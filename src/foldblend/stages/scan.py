"""`foldblend scan`: every image read once before training (folds/scan.csv, duplicates, out-of-domain scores,
the train/test shift check, folds/eda.html).

The scan's work is `scanning.run.run_scan`, a library function because the folds stage scans again when
input/ changed since the last scan; this module is the command around it.
"""
from __future__ import annotations

import argparse

from foldblend.paths import Project
from foldblend.scanning.run import run_scan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace, project: Project) -> None:
    run_scan(project, workers=args.workers, progress=not args.quiet)
