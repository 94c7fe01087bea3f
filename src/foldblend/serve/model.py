"""The model the web app serves: loaded once, what it is (CV, classes, per-class OOF F1), and classifying.

Predictions go through `predict.load_predictor` and `predict.predict_images` and their top-k through
`predict.top_k_table`, the very functions of `foldblend predict`, so the page, its HTTP API and the CSV
agree on every image. Nothing here knows about the web: `serve.py` wraps it in a page.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from foldblend.artifacts import read_json
from foldblend.inference.bundle import BUNDLE_FILE, find_bundle
from foldblend.inference.load import load_predictor
from foldblend.inference.predictor import BLEND, Predictor, predict_images, top_k_table
from foldblend.inference.similar import FeatureIndex, find_feature_index
from foldblend.reporting.sources import oof_sources

SIMILAR = 5  # training images shown per upload when features exist


@dataclass
class ModelCard:
    """What a person should know before trusting the served model."""

    name: str
    scores: dict[str, dict]                 # {"nested CV": {...}, "in-sample": {...}} or {"OOF": {...}}; {} for files
    scored_on: str                          # what the per-class numbers are computed on ("" when none)
    members: list[dict]                     # {member, weight, macro_f1}; weight 0: in the blend, not used
    method: str = ""
    biases: bool = False
    # class, train images, precision, recall, F1, OOF images
    per_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    @property
    def headline(self) -> str:
        """e.g. "blend (greedy): nested CV macro-F1 0.9896"."""
        kind = f"{self.name} ({self.method})" if self.method else self.name
        for label, s in self.scores.items():
            if s.get("macro_f1") is not None:
                return f"{kind}: {label} macro-F1 {s['macro_f1']:.4f}"
        return f"{kind}: no CV (trained weights outside this project's oof/)"


def _train_counts(project, classes: list[str]) -> pd.Series:
    try:
        labels = pd.read_csv(project.folds_csv, usecols=["label"], dtype=str)["label"]
    except (OSError, ValueError):
        return pd.Series(np.nan, index=classes)
    return labels.value_counts().reindex(classes)


def _per_class(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f1, support = precision_recall_fscore_support(labels, probs.argmax(1), labels=list(range(len(classes))),
                                                        zero_division=0)
    return pd.DataFrame({"class": classes, "precision": p, "recall": r, "F1": f1, "OOF images": support})


def _bundle_card(folder: Path, predictor: Predictor) -> ModelCard:
    """A bundle's card: the scores it recorded when exported (no OOF travels with it)."""
    meta = read_json(folder / BUNDLE_FILE) or {}
    provenance = meta.get("provenance") or {}
    scores = {}
    for key, label in (("cv_nested", "nested CV"), ("cv", "OOF CV")):
        if provenance.get(key):
            scores[f"{label} (at export)"] = provenance[key]
    held = provenance.get("holdout") or {}
    if held.get("blend"):
        scores[f"holdout ({held.get('n_images', '?')} images)"] = held["blend"]
    members = [{"member": n, "weight": w, "macro_f1": None} for n, w in predictor.weights.items()]
    return ModelCard(f"{folder.name} (bundle of {meta.get('name', '?')})", scores, "", members,
                     predictor.method if len(members) > 1 else "", predictor.biases is not None,
                     per_class=pd.DataFrame({"class": predictor.classes}), notes=list(predictor.notes))


def model_card(project, exp: str, predictor: Predictor) -> ModelCard:
    """CV, members and per-class OOF scores of the blend or an experiment; little for weights from elsewhere."""

    classes = predictor.classes
    notes = list(predictor.notes)
    if exp == BLEND:
        blend = read_json(project.oof / "_blend" / "blend.json") or {}
        weights, scores = blend.get("weights") or {}, blend.get("member_scores") or {}
        members = [{"member": m, "weight": weights.get(m), "macro_f1": (scores.get(m) or {}).get("macro_f1")}
                   for m in blend.get("members") or weights]
        cv = {"nested CV": blend.get("cv_nested") or {}, "in-sample": blend.get("cv_in_sample") or {}}
        held = blend.get("holdout") or {}
        if held.get("blend"):  # scored once, after fitting, on images nothing was trained or fitted on
            cv[f"holdout ({held.get('n_images', '?')} images)"] = held["blend"]
            for row in members:
                row["holdout macro_f1"] = ((held.get("members") or {}).get(row["member"]) or {}).get("macro_f1")
        card = ModelCard(BLEND, cv, "the blend's nested-CV out-of-fold predictions", members, blend.get("method", ""),
                         blend.get("biases") is not None, notes=notes)
        sources = oof_sources(project, None, project.oof / "_blend" / "blend.npz")
    elif (project.oof_dir(exp) / "scores.json").exists():
        overall = (read_json(project.oof_dir(exp) / "scores.json") or {}).get("overall") or {}
        card = ModelCard(exp, {"OOF CV": overall}, f"oof/{exp}/ (views averaged)",
                         [{"member": exp, "weight": 1.0, "macro_f1": overall.get("macro_f1")}], notes=notes)
        try:
            sources = oof_sources(project, exp, project.oof / "_blend" / "absent")
        except (ValueError, OSError) as e:  # a member folder mid-rewrite: serve anyway, say why scores are missing
            sources = {}
            card.notes.append(f"per-class scores left out: {e}")
    elif find_bundle(exp) is not None:
        return _bundle_card(find_bundle(exp), predictor)
    else:  # a checkpoint or a folder of them from elsewhere: nothing was scored here
        members = [{"member": n, "weight": w, "macro_f1": None} for n, w in predictor.weights.items()]
        return ModelCard(exp, {}, "", members, per_class=pd.DataFrame({"class": classes}), notes=notes)
    table = pd.DataFrame({"class": classes})
    source = next(iter(sources.values()), None)
    if source is not None and list(source["classes"]) == classes:
        table = _per_class(np.asarray(source["labels"]), source["probs"], classes)
    elif source is not None:
        card.notes.append("the OOF predictions name other classes than the models: per-class scores left out")
        card.scored_on = ""
    table.insert(1, "train images", _train_counts(project, classes).to_numpy())
    card.per_class = table
    return card


@dataclass
class Served:
    """A loaded predictor with its card, features for similar images (or None), and how to run it."""

    exp: str
    predictor: Predictor
    card: ModelCard
    device: object = "cpu"
    batch_size: int = 64
    features: FeatureIndex | None = None
    project: object = None


def load_served(project, exp: str, device="cpu", batch_size: int = 64) -> Served:
    predictor = load_predictor(project, exp, device)
    return Served(exp, predictor, model_card(project, exp, predictor), device, batch_size,
                  find_feature_index(project), project)


def _readable_reason(why: str, path: Path, name: str) -> str:
    """A failure from `predict_images` in the person's terms: their file name, not a temporary path."""
    return why.replace(str(path), name) if str(path) in why else f"{name}: {why}"


def classify(served: Served, paths: list[Path], names: list[str], top_k: int = 5, progress: bool = True) -> dict:
    """Every readable image's top-k (as `foldblend predict` writes them) and each member's view of it.

    Returns plain JSON types: {"model", "classes", "images": [{file, predicted, top_k: [{class, prob}],
    members: [{member, weight, predicted, prob, prob_of_predicted}], similar: [...]}], "errors": [...]}.
    """
    predictor = served.predictor
    out = {"model": served.exp, "classes": predictor.classes, "images": [], "errors": []}
    if not paths:
        return out
    pred = predict_images(predictor, paths, served.batch_size, served.device, progress=progress)
    table = top_k_table(pred, names, top_k)
    k = sum(c.startswith("class_") for c in table.columns)
    ok = np.flatnonzero(pred.ok)
    similar = served.features.search([paths[i] for i in ok], SIMILAR) if served.features is not None else None
    for row, (i, record) in enumerate(zip(ok, table.to_dict("records"))):
        top = predictor.classes.index(record["predicted"])
        members = []
        for member, probs in pred.member_probs.items():
            p = probs[row]
            members.append({"member": member, "weight": round(float(predictor.weights[member]), 6),
                            "predicted": predictor.classes[int(p.argmax())], "prob": round(float(p.max()), 6),
                            "prob_of_predicted": round(float(p[top]), 6)})
        image = {"file": names[i], "predicted": record["predicted"],
                 "top_k": [{"class": record[f"class_{r}"], "prob": float(record[f"prob_{r}"])}
                           for r in range(1, k + 1)],
                 "members": members}
        if similar is not None:
            image["similar"] = [vars(n) for n in similar[row]]
        out["images"].append(image)
    out["errors"] = [_readable_reason(pred.failures[str(p)], p, n) for p, n in zip(paths, names)
                     if str(p) in pred.failures]
    return out
