"""Arguments shared by the stages that load trained models (`evaluate`, `predict`): which models, in
what batches, on which device, and the predictor they name. Not a stage: a helper of two.
"""
from __future__ import annotations

import argparse

import torch

from foldblend.data.classes import class_table
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import Predictor
from foldblend.members.infer import resolve_device


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What `evaluate` and `predict` both take: which models, in what batches, on which device."""
    parser.add_argument("--exp", required=True, help="an experiment under models/, `blend` for the last blend, "
                        "a bundle folder from `foldblend export`, or a checkpoint file / folder of checkpoints")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")


def predictor_from_args(args: argparse.Namespace, project) -> tuple[Predictor, torch.device]:
    """The `add_model_arguments` half of `evaluate` and `predict`: the models, on their device."""
    device = resolve_device(args.device)
    predictor = load_predictor(project, args.exp, device)
    for note in predictor.notes:
        print(f"note: {note}")
    print(f"class index of {args.exp} (outputs are in this order):\n{class_table(predictor.classes)}")
    return predictor, device
