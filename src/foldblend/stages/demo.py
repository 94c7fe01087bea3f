"""`foldblend demo`: the built-in demo competition (scikit-learn's digits) in input/, when input/ is empty.

The competition itself is built by `data.demo`; this stage decides whether to build it and writes the demo's
fold configs into folds/ when none are there.
"""
from __future__ import annotations

import argparse

from foldblend.data.demo import build_demo, is_demo_complete, is_empty_input, write_demo_configs
from foldblend.paths import Project


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace, project: Project) -> None:
    half_built = (project.input / ".demo_complete").exists() and not is_demo_complete(project.input)
    if is_empty_input(project.input) or args.force or half_built:
        print(f"building the demo competition (scikit-learn digits) in {project.input.name}/")
        build_demo(project.input, seed=args.seed)
        written = write_demo_configs(project.folds_dir)
        folder = project.rel(project.folds_dir)
        print(f"wrote the demo's fold configs: {', '.join(f'{folder}/{n}' for n in written)}" if written else
              f"{folder}/ already holds fold configs: the demo's are not written")
    else:
        print(f"{project.input.name}/ already holds a competition: the demo is not built")
