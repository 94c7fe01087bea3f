"""Predicting new images with trained models: one experiment's fold models, or the last blend.

An experiment predicts as the mean of its fold models' probabilities, each averaged over the TTA views
its checkpoint names. The blend (`oof/_blend/blend.json`) is the fitted pipeline it saved
(`ensemble.fitted.FittedBlend`): each member's fold models give its TTA-view probabilities here
(`ensemble.pipeline.member_views`), and `ensemble.pipeline.apply_blend`, the function that made the
blend's own test predictions, combines them, for every method (a stacker included); fed the test
images, it gives the blend's test predictions. `--method rank` ranks within the images predicted together.
Images are decoded once with `data.read.load_rgb` and resized per model size with `data.cache.resize_square`;
unreadable files are reported and left out, never fatal.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from foldblend.artifacts import changed_members
from foldblend.data.cache import resize_square
from foldblend.data.read import ImageReadError, is_image_name, load_rgb
from foldblend.ensemble.fitted import FittedBlend
from foldblend.ensemble.pipeline import apply_blend, member_probs, member_views
from foldblend.errors import FoldblendError
from foldblend.members.base import MemberKind
from foldblend.members.infer import infer
from foldblend.members.loaders import eval_loader
from foldblend.members.registry import all_kinds, checkpoint_names, get_kind, kind_of_file

BLEND = "blend"


@dataclass
class FoldModel:
    """One fold's best checkpoint, ready to predict."""

    name: str              # e.g. cnn_small/fold_0
    model: torch.nn.Module
    classes: list[str]
    img_size: int
    views: list[str]
    mean: list[float]
    std: list[float]
    amp: str = "auto"      # the mixed precision its fold was predicted with, so predictions match the blend
    arch: dict = field(default_factory=dict)  # constructor arguments (members.cnn.models.Arch): export needs them
    kind: str = "cnn"      # the member kind that made it (a bundle names it per member)


@dataclass
class Predictor:
    """Everything that turns images into class probabilities: groups of fold models and the fitted blend
    that combines them (one experiment: an unfitted blend of one member, its folds and views averaged)."""

    name: str
    classes: list[str]
    members: dict[str, list[FoldModel]]
    blend: FittedBlend                  # its `members` are this predictor's, in this order
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if list(self.members) != list(self.blend.members):
            raise ValueError(f"{self.name}: fold models of {', '.join(self.members)} for a blend of "
                             f"{', '.join(self.blend.members)}")

    @property
    def sizes(self) -> list[int]:
        return sorted({m.img_size for models in self.members.values() for m in models})

    @property
    def weights(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.blend.members, self.blend.weights)}

    @property
    def method(self) -> str:
        return self.blend.options.method

    @property
    def biases(self) -> np.ndarray | None:
        return self.blend.biases


@dataclass
class Prediction:
    """Probabilities for the readable images; `failures` maps each unreadable file to the reason."""

    paths: list[Path]
    ok: np.ndarray          # (N,) bool
    probs: np.ndarray       # (N, C); rows of unreadable images are NaN
    classes: list[str]
    failures: dict[str, str]
    member_probs: dict[str, np.ndarray] = field(default_factory=dict)  # (readable N, C) per member, before combining


# ----------------------------------------------------------------------------- loading models

def _prediction_settings(path: Path, ckpt: dict) -> tuple[list[str], str]:
    """TTA views and mixed precision the fold last predicted with (its done.json), so evaluate/predict
    match the member in oof/; the checkpoint's own values (from training time) otherwise."""
    done = path.parent / "done.json"
    settings = json.loads(done.read_text()).get("predictions", {}) if done.exists() else {}
    views = settings.get("tta") or ckpt.get("tta") or ["identity"]
    amp = settings.get("amp") or (ckpt.get("config") or {}).get("amp", "auto")
    return list(views), str(amp)


def output_name(exp: str) -> str:
    """A file-name-safe name for outputs of `exp` (an experiment, `blend`, or a checkpoint path)."""
    return Path(exp).stem if ("/" in exp or exp.endswith((".pt", ".npz"))) else exp


def _fold_checkpoints(exp_dir: Path) -> list[Path]:
    """Every fold's checkpoint (its kind's `checkpoint` file) under models/<exp>/ (or a copy of it), in fold order."""
    found = [p for name in checkpoint_names() for p in exp_dir.glob(f"fold_*/{name}")]
    return sorted(found, key=lambda p: int(p.parent.name.split("_")[1]))


def _checkpoints_at(path: Path) -> list[Path]:
    """A checkpoint file, or every file below a folder (e.g. a copied models/<exp>/) that a kind claims, sorted."""
    if path.is_file():
        return [path]
    kinds = all_kinds()
    return _fold_checkpoints(path) or sorted(p for p in path.rglob("*")
                                             if p.is_file() and any(k.claims(p) for k in kinds))


def fold_kind(path: Path) -> MemberKind:
    """The member kind whose checkpoint `path` is."""
    kind = kind_of_file(path)
    if kind is None:
        raise FileNotFoundError(f"{path}: not a checkpoint of any member kind ({', '.join(checkpoint_names())})")
    return kind


def load_experiment(project, exp: str, device="cpu") -> list[FoldModel]:
    """Every fold's best.pt under models/<exp>/, in fold order; or checkpoints at a path (file or folder).

    A path lets `evaluate`/`predict` run on trained weights copied out of the project: each checkpoint
    carries its architecture, classes, image size, TTA views and normalisation.
    """
    as_path = Path(exp)
    exp_dir = project.models / exp
    named = as_path.name == exp and as_path.suffix not in (".pt", ".npz") and exp_dir.is_dir()  # not a path
    if not named and (as_path.suffix in (".pt", ".npz") or as_path.is_dir()):
        checkpoints = _checkpoints_at(as_path) if as_path.exists() else []
        if not checkpoints:
            raise FileNotFoundError(f"{as_path}: no checkpoint ({', '.join(checkpoint_names())}) there")
        exp_dir = as_path
    else:
        checkpoints = _fold_checkpoints(exp_dir)
    if not checkpoints:
        known = sorted(p.name for p in project.models.glob("*") if not p.name.startswith(".") and p.is_dir())
        raise FileNotFoundError(f"no trained fold models in {exp_dir} (fold_<k>/{' or '.join(checkpoint_names())}); "
                                f"experiments with models: {', '.join(known) or 'none'}")
    out, shared = [], {}  # per kind: what its folds share (an embedding member's frozen backbone)
    for path in checkpoints:
        kind = fold_kind(path)
        model, ckpt = kind.load_fold(path, device, shared.setdefault(kind.name, {}))
        label = path.parent.name if path.name == kind.checkpoint else path.stem
        try:
            views, amp = _prediction_settings(path, ckpt)
            out.append(FoldModel(label if exp_dir == as_path else f"{exp}/{label}", model, list(ckpt["classes"]),
                                 int(ckpt["img_size"]), views, list(ckpt["mean"]), list(ckpt["std"]), amp,
                                 arch=dict(ckpt.get("arch") or {"model": ckpt.get("model")}),
                                 kind=kind.name))
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a checkpoint foldblend did not write
            if isinstance(e, FoldblendError):
                raise
            raise FoldblendError(f"{path}: not a foldblend fold checkpoint ({type(e).__name__}: "
                                 f"{(str(e).strip().splitlines() or [''])[0][:160]}); name one written by "
                                 f"`foldblend train`") from None
    _check_same_classes({m.name: m.classes for m in out})
    if len({tuple(m.views) for m in out}) > 1:
        raise ValueError(f"{exp}: its folds were last predicted with different TTA views "
                         f"({', '.join(f'{m.name}: {m.views}' for m in out)}); run `foldblend train` for it "
                         f"so every fold predicts with the config's views")
    return out


def _check_same_classes(classes_by_name: dict[str, list[str]]) -> list[str]:
    (first_name, first), *rest = classes_by_name.items()
    for name, classes in rest:
        if classes != first:
            raise ValueError(f"{name} predicts classes {classes[:5]}... but {first_name} predicts {first[:5]}...; "
                             "models trained on different class lists cannot be averaged")
    return first


def blend_notes(fitted: FittedBlend) -> list[str]:
    """What a person predicting with this blend should know."""
    if fitted.options.method == "rank":
        return ["the blend ranks (--method rank) within the images predicted together: an image's probabilities "
                "depend on the others predicted with it"]
    return []


def read_blend(project) -> dict:
    path = project.oof / "_blend" / "blend.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `foldblend blend` first, or name an experiment with --exp")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- images

def list_images(sources: list[str | Path]) -> list[Path]:
    """Image files named directly, or found (recursively, sorted) in the folders named."""
    out: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            out += sorted(p for p in src.rglob("*") if p.is_file() and is_image_name(p.name))
        elif src.exists():
            out.append(src)
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
    return out


def decode_images(paths: list[Path], sizes: list[int], workers: int | None = None,
                  progress: bool = True) -> tuple[dict[int, np.ndarray], np.ndarray, dict[str, str]]:
    """Decode each file once into every size: ({size: uint8 (N, S, S, 3)}, ok (N,), {path: why})."""
    from tqdm.auto import tqdm

    arrays = {s: np.zeros((len(paths), s, s, 3), np.uint8) for s in sizes}
    ok = np.zeros(len(paths), bool)
    failures: dict[str, str] = {}

    def one(i: int) -> None:
        try:
            rgb = load_rgb(paths[i], draft_size=max(sizes))
        except ImageReadError as e:
            failures[str(paths[i])] = str(e)
            return
        for s in sizes:
            arrays[s][i] = resize_square(rgb, s)
        ok[i] = True

    with ThreadPoolExecutor(workers) as pool:  # Pillow and cv2 release the GIL while decoding/resizing
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="decode", unit="img",
                  disable=not progress))
    return arrays, ok, failures


# ----------------------------------------------------------------------------- predicting

def fold_model_logits(fm: FoldModel, images: np.ndarray, batch_size: int, device, progress: bool) -> np.ndarray:
    """(V, N, C) logits of one fold model under each of its TTA views."""
    loader = eval_loader(images, np.arange(len(images)), batch_size)
    return infer(fm.model, loader, fm.views, device, fm.mean, fm.std, fm.amp, desc=fm.name if progress else None)


def _kind_member_logits(models: list[FoldModel], images: dict[int, np.ndarray], batch_size: int, device,
                        progress: bool) -> np.ndarray | None:
    """(F, V, N, C) when the member's kind predicts its folds together (an embedding member: its frozen
    backbone once instead of once per fold); None to predict them one by one."""
    return get_kind(models[0].kind).member_logits(models, images, batch_size, device, progress)


def predict_member_views(predictor: Predictor, name: str, images: dict[int, np.ndarray], batch_size: int, device,
                         progress: bool) -> np.ndarray:
    """(V', N, C): the member's view probabilities as the blend reads them (`member_views`), from its fold
    models' logits, exactly as the blend read its test set."""
    models = predictor.members[name]
    logits = _kind_member_logits(models, images, batch_size, device, progress)
    if logits is None:
        logits = np.stack([fold_model_logits(fm, images[fm.img_size], batch_size, device, progress)
                           for fm in models])                                     # (F, V, N, C)
    return member_views(logits, models[0].views, predictor.blend.options)


CHUNK = 4096  # images decoded and held in memory at once by predict_images


def predict_images(predictor: Predictor, paths: list[Path], batch_size: int = 64, device="cpu",
                   progress: bool = True) -> Prediction:
    """Class probabilities of every readable image in `paths`.

    Decoded and predicted `CHUNK` images at a time, so memory stays bounded on 25k-image folders.
    """
    paths = [Path(p) for p in paths]
    ok = np.zeros(len(paths), bool)
    failures: dict[str, str] = {}
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in predictor.members}
    for start in range(0, len(paths), CHUNK):
        part = slice(start, start + CHUNK)
        images, ok[part], part_failures = decode_images(paths[part], predictor.sizes, progress=progress)
        failures.update(part_failures)
        if ok[part].any():
            readable = {s: a[ok[part]] for s, a in images.items()}
            for n in predictor.members:
                chunks[n].append(predict_member_views(predictor, n, readable, batch_size, device, progress))
    probs = np.full((len(paths), len(predictor.classes)), np.nan)
    members = {}
    if ok.any():  # members combine once, over every image: rank averaging depends on all the rows
        views = [np.concatenate(chunks[n], axis=1) for n in predictor.blend.members]
        probs[ok] = apply_blend(predictor.blend, views)
        members = dict(zip(predictor.blend.members, member_probs(predictor.blend, views)))
    return Prediction(paths, ok, probs, predictor.classes, failures, members)


def top_k_table(pred: Prediction, ids: list[str], k: int = 3) -> pd.DataFrame:
    """id, predicted, then class_i / prob_i for the k most probable classes (readable images only)."""
    k = max(1, min(k, len(pred.classes)))
    probs = pred.probs[pred.ok]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    table = {"id": [i for i, good in zip(ids, pred.ok) if good],
             "predicted": [pred.classes[j] for j in order[:, 0]]}
    for r in range(k):
        table[f"class_{r + 1}"] = [pred.classes[j] for j in order[:, r]]
        table[f"prob_{r + 1}"] = np.round(np.take_along_axis(probs, order[:, r:r + 1], axis=1)[:, 0], 6)
    return pd.DataFrame(table)


def relative_ids(paths: list[Path], sources: list[str | Path]) -> list[str]:
    """Each path relative to the folder it was found in (a file named directly keeps its name as given)."""
    folders = [Path(s) for s in sources if Path(s).is_dir()]
    out = []
    for p in paths:
        base = next((f for f in folders if p.is_relative_to(f)), None)
        out.append(p.relative_to(base).as_posix() if base is not None else p.as_posix())
    return out


# ----------------------------------------------------------------------------- CLI hooks


def load_project_predictor(project, name: str, device="cpu") -> Predictor:
    """An experiment under models/ (or checkpoint file(s)), or `blend`: the project's last blend."""
    if name != BLEND:
        models = load_experiment(project, name, device)
        return Predictor(name, models[0].classes, {name: models}, FittedBlend.unfitted([name]))
    blend = read_blend(project)
    path = project.oof / "_blend" / "blend.json"
    if not blend.get("pipeline"):
        raise FoldblendError(f"{path}: no fitted pipeline in it (written by an older foldblend); "
                             f"run `foldblend blend` again")
    try:
        fitted = FittedBlend.from_json(blend["pipeline"])
    except ValueError as e:
        raise FoldblendError(f"{path}: {e}; run `foldblend blend` again") from None
    fitted = fitted.only(fitted.used_members())  # a member the blend gives no weight is not loaded
    members = {n: load_experiment(project, n, device) for n in fitted.members}
    classes = _check_same_classes({n: models[0].classes for n, models in members.items()})
    predictor = Predictor(BLEND, classes, members, fitted, notes=blend_notes(fitted))
    changed = changed_members(project.oof, blend.get("member_digests") or {})
    if changed:
        predictor.notes.append(f"oof/{changed[0]}/ changed after the last blend: its weights were fitted on older "
                               f"predictions (run `foldblend blend` again)")
    return predictor
