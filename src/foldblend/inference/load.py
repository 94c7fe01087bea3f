"""Load what `--exp` names: a bundle folder (anywhere), or the project's experiment or last blend."""
from __future__ import annotations

from foldblend.inference.bundle import find_bundle, load_bundle
from foldblend.inference.predictor import BLEND, Predictor, load_project_predictor


def load_predictor(project, name: str, device="cpu") -> Predictor:
    """`name` is an experiment under models/, `blend` for the last blend's members and weights, a bundle
    folder written by `foldblend export` (anywhere: it needs no project), or checkpoint file(s)."""
    bundle = find_bundle(name) if name != BLEND else None  # `blend` is always the project's last blend
    if bundle is not None:
        return load_bundle(bundle, device)
    return load_project_predictor(project, name, device)
