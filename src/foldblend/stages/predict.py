"""`foldblend predict`: image files or folders predicted by an experiment, the blend or a bundle; a CSV of
the top-k classes with their probabilities.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from foldblend.artifacts import write_csv
from foldblend.inference.predictor import list_images, output_name, predict_images, relative_ids, top_k_table
from foldblend.safety import is_inside, say_swept, sweep_temporaries
from foldblend.stages._args import add_model_arguments, predictor_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", nargs="+", required=True, metavar="FOLDER|FILE",
                        help="image files, or folders searched recursively")
    add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=3, help="how many classes (with probabilities) per image")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: oof/predict_<exp>.csv)")


def run(args: argparse.Namespace, project) -> Path:
    predictor, device = predictor_from_args(args, project)
    paths = list_images(args.images)
    if not paths:
        raise ValueError(f"no image files in {', '.join(map(str, args.images))}")
    pred = predict_images(predictor, paths, args.batch_size, device)
    table = top_k_table(pred, relative_ids(paths, args.images), args.top_k)
    out = Path(args.out) if args.out else project.oof / f"predict_{output_name(args.exp)}.csv"
    if is_inside(out.parent, project.root):  # a folder of the user's own (--out elsewhere) is left alone
        say_swept(sweep_temporaries(out.parent), project)
    write_csv(out, table)
    for path, why in pred.failures.items():
        print(f"skipped unreadable image: {why if path in why else f'{path}: {why}'}")
    print(f"predicted {len(table)} images with {args.exp} on {device}"
          + (f" ({len(pred.failures)} unreadable, skipped)" if pred.failures else "") + f": wrote {out}")
    return out
