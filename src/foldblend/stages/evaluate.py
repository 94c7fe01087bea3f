"""Score trained models on labelled images - a `<class>/<image>` folder or a CSV of path,label - per-class
F1, micro-F1, confusion matrix, mistakes.

The competition deliverable "a script that takes the evaluation folder and the weights and prints each
class's F1 and the average": `evaluate_folder` predicts (`predict`) and scores (scikit-learn's
`classification_report`), `format_evaluation` prints, `write_evaluation` writes the files.

Averages are over the classes present in the folder or predicted (scikit-learn's default), so a folder
holding a subset of the classes is not penalised for classes it cannot contain.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, classification_report, f1_score

from foldblend.artifacts import write_bytes, write_csv, write_text
from foldblend.data.read import is_image_name
from foldblend.data.tables import read_table
from foldblend.inference.predictor import Predictor, output_name, predict_images
from foldblend.reporting.plots import confusion_png
from foldblend.safety import is_inside, say_swept, sweep_temporaries
from foldblend.stages._args import add_model_arguments, predictor_from_args

REPORT_DIGITS = 4


@dataclass
class Evaluation:
    name: str
    classes: list[str]          # the model's classes, index order
    ids: list[str]              # readable images, relative to the folder
    y_true: np.ndarray          # (N,) class indices
    y_pred: np.ndarray          # (N,)
    probs: np.ndarray           # (N, C)
    failures: dict[str, str]    # unreadable file -> reason
    report: dict                # classification_report(output_dict=True)
    report_text: str
    accuracy: float
    micro_f1: float

    @property
    def macro_f1(self) -> float:
        return float(self.report["macro avg"]["f1-score"])


PATH_COLUMNS = ("path", "image", "file", "filename", "file_name", "image_path", "id")
LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "y")


def labelled_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Image files under `folder/<class>/` (any depth below the class folder) and their class names;
    or, for a `.csv` file, the rows of its path and label columns (see `labelled_csv`)."""
    folder = Path(folder)
    if folder.suffix.lower() == ".csv" and folder.is_file():
        return labelled_csv(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder (expected {folder}/<class>/<image> files) nor a CSV of "
                                f"path,label")
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_name(p.name))
        paths += found
        labels += [class_dir.name] * len(found)
    if not paths:
        raise ValueError(f"{folder}: no images in class sub-folders (expected {folder}/<class>/<image>)")
    return paths, labels


def labelled_csv(csv: Path) -> tuple[list[Path], list[str]]:
    """(paths, labels) of a CSV with a header: a path column (path, image, file, ...; else the first) and a
    label column (label, class, ...; else the second). Relative paths are relative to the CSV's folder."""
    df = read_table(csv, "labelled CSV", "give a CSV of path,label (a header line, then one image per line)")
    lower = {c.lower(): c for c in df.columns}
    path_col = next((lower[n] for n in PATH_COLUMNS if n in lower), df.columns[0])
    label_col = next((lower[n] for n in LABEL_COLUMNS if n in lower and lower[n] != path_col), None)
    if label_col is None and len(df.columns) >= 2:
        label_col = next(c for c in df.columns if c != path_col)
    if label_col is None or df.empty:
        raise ValueError(f"{csv}: expected a header and rows of path,label (columns: {list(df.columns)}, "
                         f"{len(df)} rows)")
    paths = [p if p.is_absolute() else csv.parent / p for p in map(Path, df[path_col].str.strip())]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{csv}: {len(missing)} path(s) in column {path_col!r} are not files, e.g. "
                                f"{missing[:3]} (relative paths are read from the CSV's folder)")
    return paths, df[label_col].str.strip().tolist()


def class_names_from_ids(labels: list[str], classes: list[str]) -> tuple[list[str], bool]:
    """Labels given as class indices (0..C-1) where the class names are not integers -> names; else as given."""
    numeric = all(re.fullmatch(r"\d+", lab) for lab in labels)
    if not numeric or set(labels) <= set(classes) or any(int(lab) >= len(classes) for lab in labels):
        return labels, False
    return [classes[int(lab)] for lab in labels], True


def check_known_classes(labels: list[str], classes: list[str], model_name: str) -> None:
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"the evaluation folder has classes the model {model_name!r} does not know: "
                         f"{', '.join(unknown)} (model classes: {', '.join(classes)})")


def report_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> tuple[dict, str, float, float]:
    """(report dict, report text, accuracy, micro-F1) from scikit-learn, labelled with class names."""
    present = sorted(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist()))
    names = [classes[i] for i in present]
    kwargs = dict(labels=present, target_names=names, digits=REPORT_DIGITS, zero_division=0)
    report = classification_report(y_true, y_pred, output_dict=True, **kwargs)
    text = classification_report(y_true, y_pred, **kwargs)
    micro = f1_score(y_true, y_pred, labels=present, average="micro", zero_division=0)
    return report, text, float(accuracy_score(y_true, y_pred)), float(micro)


def evaluate_predictions(name: str, classes: list[str], ids: list[str], y_true, probs: np.ndarray,
                         failures: dict[str, str] | None = None) -> Evaluation:
    """Score (N, C) probabilities against true class indices (argmax decisions)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(axis=1)
    report, text, acc, micro = report_scores(y_true, y_pred, classes)
    return Evaluation(name, list(classes), list(ids), y_true, y_pred, np.asarray(probs), dict(failures or {}),
                      report, text, acc, micro)


def evaluate_folder(predictor: Predictor, folder: str | Path, batch_size: int = 64, device="cpu",
                    progress: bool = True) -> Evaluation:
    """Predict every readable image of `folder/<class>/` and score it; unreadable files are listed, skipped."""
    folder = Path(folder)
    paths, labels = labelled_images(folder)
    labels, from_ids = class_names_from_ids(labels, predictor.classes)
    if from_ids:
        print(f"{folder}: labels read as class indices (0..{len(predictor.classes) - 1}) of the class index above")
    check_known_classes(labels, predictor.classes, predictor.name)
    pred = predict_images(predictor, paths, batch_size, device, progress)
    if not pred.ok.any():
        raise ValueError(f"{folder}: none of the {len(paths)} images could be read")
    index = {c: i for i, c in enumerate(predictor.classes)}
    base = folder.parent if folder.is_file() else folder
    ids = [(p.relative_to(base) if p.is_relative_to(base) else p).as_posix() for p, good in zip(paths, pred.ok) if good]
    y_true = [index[lab] for lab, good in zip(labels, pred.ok) if good]
    return evaluate_predictions(predictor.name, predictor.classes, ids, y_true, pred.probs[pred.ok], pred.failures)


# ----------------------------------------------------------------------------- output

def predictions_table(ev: Evaluation) -> pd.DataFrame:
    """image, true, predicted, prob of predicted, correct: one row per scored image."""
    return pd.DataFrame({
        "image": ev.ids,
        "true": [ev.classes[i] for i in ev.y_true],
        "predicted": [ev.classes[i] for i in ev.y_pred],
        "prob": np.round(ev.probs[np.arange(len(ev.y_pred)), ev.y_pred], 6),
        "correct": ev.y_true == ev.y_pred,
    })


def format_evaluation(ev: Evaluation) -> str:
    lines = [f"evaluation of {ev.name} on {len(ev.ids)} images", "", ev.report_text.rstrip(), "",
             f"accuracy  {ev.accuracy:.{REPORT_DIGITS}f}",
             f"macro-F1  {ev.macro_f1:.{REPORT_DIGITS}f}",
             f"micro-F1  {ev.micro_f1:.{REPORT_DIGITS}f}"]
    if ev.failures:
        lines += ["", f"{len(ev.failures)} unreadable image(s) skipped:"]
        lines += [f"  {why if path in why else f'{path}: {why}'}" for path, why in sorted(ev.failures.items())]
    return "\n".join(lines)


def write_evaluation(ev: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """predictions.csv, confusion_matrix.png, report.txt (and unreadable.csv when any file was skipped)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"predictions": out_dir / "predictions.csv", "confusion": out_dir / "confusion_matrix.png",
             "report": out_dir / "report.txt"}
    write_csv(files["predictions"], predictions_table(ev))
    png = confusion_png(ev.y_true, ev.y_pred, ev.classes,
                        title=f"{ev.name}: macro-F1 {ev.macro_f1:.4f}, accuracy {ev.accuracy:.4f}")
    write_bytes(files["confusion"], png)
    write_text(files["report"], format_evaluation(ev) + "\n")
    if ev.failures:
        files["unreadable"] = out_dir / "unreadable.csv"
        write_csv(files["unreadable"], pd.DataFrame({"file": list(ev.failures), "reason": list(ev.failures.values())}))
    return files


# ----------------------------------------------------------------------------- CLI hooks

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="labelled images: a <class>/<image> folder, "
                             "or a CSV of path,label (e.g. folds/holdout.csv)")
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: oof/eval_<exp>/)")


def run(args: argparse.Namespace, project) -> Evaluation:
    predictor, device = predictor_from_args(args, project)
    ev = evaluate_folder(predictor, args.data, args.batch_size, device)
    print(format_evaluation(ev))
    out_dir = args.out or project.oof / f"eval_{output_name(args.exp)}"
    if is_inside(out_dir, project.root):  # a folder of the user's own (--out elsewhere) is left alone
        say_swept(sweep_temporaries(out_dir), project)
    files = write_evaluation(ev, out_dir)
    print("wrote " + ", ".join(project.rel(p) for p in files.values()))
    return ev
