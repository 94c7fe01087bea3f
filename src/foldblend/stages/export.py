"""`foldblend export`: an experiment or the last blend written as a bundle folder (`inference.bundle`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from foldblend.inference.bundle import BUNDLE_FILE, export_bundle, sweep_export_temporaries
from foldblend.safety import say_swept


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp", required=True, help="an experiment under models/, or `blend` for the last blend")
    parser.add_argument("out", nargs="?", type=Path, default=None,
                        help="bundle folder to write, inside the project (default: export/<exp>/)")


def run(args: argparse.Namespace, project) -> Path:
    out = args.out or project.root / "export" / args.exp
    say_swept(sweep_export_temporaries(project, out), project)  # what killed exports left beside it
    out = export_bundle(project, args.exp, out)
    meta = json.loads((out / BUNDLE_FILE).read_text(encoding="utf-8"))
    n = sum(len(m["folds"]) for m in meta["members"])
    print(f"exported {args.exp}: {len(meta['members'])} member(s), {n} fold model(s), {len(meta['classes'])} classes "
          f"-> {project.rel(out)}/ (bundle.json + weights/*.safetensors)")
    print(f"use it anywhere: foldblend evaluate --data FOLDER|CSV --exp {project.rel(out)}   "
          f"foldblend predict --images FOLDER --exp {project.rel(out)}")
    return out
