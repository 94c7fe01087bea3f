"""Do the configs `foldblend init` writes beat a plain network, and at what cost? One run compares:

- a plain single network: a bare PyTorch loop (no augmentation, no folds, no TTA, no blend) with the
  architecture, size, batch, lr and epochs `init --preset medium` gives its main from-scratch member,
  trained once on every train image;
- `init --preset fast` and `init --preset medium` (the default), each trained and blended as `bash run.sh`
  does (`--method greedy --tta weighted --bias`), in a project folder of its own;
- `init --preset medium --time-limit` set to 5x the plain network's wall time (the compute target);
- each member of the medium run alone: the embedding heads, the pretrained fine-tune, the networks from scratch.

Each blend's row shows its nested CV and its confidence estimate (docs/cv-honesty.md) beside
its test score.

The data is `styles.py`'s: 10 shape and 6 glyph classes at 28-120 px, imbalanced (--imbalance), train
drawn in flat/textured/photo styles and test in unseen outline/sketch styles, so the test score is
macro-F1 on a held-out style (the test labels are known here). Times are wall-clock seconds on this
machine, measured in this run; on a shared machine they move with the load, printed at start and end.

    .venv/bin/python bench/recipes.py --root /path/to/empty/folder [--per-class 50] [--imbalance 4]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).parent))
from styles import CLASSES, GLYPH_CLASSES, write_competition  # noqa: E402

from foldblend.cli import main as foldblend  # noqa: E402
from foldblend.data.cache import resize_square  # noqa: E402
from foldblend.data.read import load_rgb  # noqa: E402
from foldblend.members.cnn.models import Arch, create_model, normalisation  # noqa: E402
from foldblend.metrics import softmax  # noqa: E402

BLEND = ["--method", "greedy", "--tta", "weighted", "--bias"]


def run(root: Path, *args: str) -> float:
    t0 = time.perf_counter()
    if foldblend(["--root", str(root), *args]) != 0:
        raise SystemExit(f"foldblend {' '.join(args)} failed in {root}")
    return time.perf_counter() - t0


def pipeline(root: Path, data: Path, init_args: list[str], folds: int) -> dict:
    """A project of its own: the same input, then scan, folds, init, train, blend, each timed."""
    shutil.copytree(data, root / "input")
    (root / "input" / "competition.yaml").write_text(f"n_splits: {folds}\n")
    seconds = {stage: run(root, stage, "--quiet") for stage in ("scan", "folds")}
    seconds["init"] = run(root, "init", *init_args)
    seconds["train"] = run(root, "train", "--quiet")
    seconds["blend"] = run(root, "blend", *BLEND)
    return seconds


def test_f1(probs: np.ndarray, ids, classes, truth: pd.DataFrame) -> float:
    pred = pd.Series(np.asarray(classes)[probs.argmax(1)], index=np.asarray(ids).astype(str))
    return float(f1_score(truth["Expected"], pred[truth["Id"]].to_numpy(), average="macro"))


def member_rows(root: Path, truth: pd.DataFrame, tag: str) -> list[dict]:
    blend = json.loads((root / "oof" / "_blend" / "blend.json").read_text())
    rows = []
    for name in blend["members"]:
        scores = json.loads((root / "oof" / name / "scores.json").read_text())
        with np.load(root / "oof" / name / "test.npz") as z:
            probs, ids = softmax(z["logits"]).mean(axis=(0, 1)), z["ids"]
        seconds = sum(json.loads(p.read_text())["seconds"] for p in (root / "models" / name).glob("fold_*/time.json"))
        rows.append({"run": f"{tag}: {name}", "cv": scores["overall"]["macro_f1"],
                     "test (unseen styles)": test_f1(probs, ids, scores["classes"], truth), "seconds": seconds,
                     "weight": blend["weights"][name],
                     "identity view weight": blend["fitted"]["identity_weights"].get(name)})
    return rows


def blend_row(root: Path, truth: pd.DataFrame, tag: str, seconds: dict) -> dict:
    blend = json.loads((root / "oof" / "_blend" / "blend.json").read_text())
    with np.load(root / "oof" / "_blend" / "blend.npz") as z:
        f1 = test_f1(z["test_probs"], z["test_ids"], blend["classes"], truth)
    init = json.loads((root / "folds" / "init.json").read_text())
    return {"run": f"{tag} blend ({len(blend['members'])} members)", "cv": blend["cv_nested"]["macro_f1"],
            "confidence estimate": (blend.get("confidence") or {}).get("macro_f1", np.nan),
            "test (unseen styles)": f1, "seconds": sum(seconds.values()),
            "train seconds": seconds["train"], "planned": init.get("planned_s")}


def plain_network(data: Path, cfg: dict, truth: pd.DataFrame, seed: int = 0) -> dict:
    """The baseline a competitor writes first: one network, every train image, a bare loop, fixed epochs."""
    t0 = time.perf_counter()
    size, batch, epochs = cfg["img_size"], cfg["batch_size"], cfg["epochs"]
    classes = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    files = [(p, c) for c, name in enumerate(classes) for p in sorted((data / "train" / name).iterdir())]
    x = np.stack([resize_square(load_rgb(p), size) for p, _ in files])
    y = torch.tensor([c for _, c in files])
    test_x = np.stack([resize_square(load_rgb(data / "testset" / i), size) for i in truth["Id"]])
    torch.manual_seed(seed)
    model = create_model(Arch(cfg["model"], len(classes)))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalisation(model))

    def tensor(a):
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std

    steps = max(1, len(x) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch].numpy()
            loss = torch.nn.functional.cross_entropy(model(tensor(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(tensor(test_x[i:i + 256])) for i in range(0, len(test_x), 256)])
    pred = np.asarray(classes)[logits.argmax(1).numpy()]
    return {"run": f"plain network ({cfg['model']}, {size} px, {epochs} epochs)", "cv": np.nan,
            "test (unseen styles)": float(f1_score(truth["Expected"], pred, average="macro")),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a new or empty folder for the data and the projects")
    ap.add_argument("--per-class", type=int, default=50, help="train images of the largest class")
    ap.add_argument("--imbalance", type=float, default=4.0, help="largest class over smallest")
    ap.add_argument("--test-per-class", type=int, default=12)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--budget-ratio", type=float, default=5.0,
                    help="the time-limited run gets this many times the plain network's wall time (0: skip it)")
    args = ap.parse_args()
    root = args.root.resolve()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root}: not empty; give a new or empty folder")
    start_load = os.getloadavg()
    data = write_competition(root / "data", per_class=args.per_class, test_per_class=args.test_per_class,
                             classes=CLASSES + GLYPH_CLASSES, imbalance=args.imbalance)
    truth = pd.read_csv(data / "test_labels.csv", dtype=str)

    medium = pipeline(root / "medium", data, ["--preset", "medium"], args.folds)
    init = json.loads((root / "medium" / "folds" / "init.json").read_text())
    main_member = next(n for n, m in init["members"].items() if m["role"] == "from scratch")
    cfg = yaml.safe_load((root / "medium" / "folds" / f"{main_member}.yaml").read_text())
    plain = plain_network(data, cfg, truth)
    fast = pipeline(root / "fast", data, ["--preset", "fast"], args.folds)
    rows = [plain, blend_row(root / "fast", truth, "fast", fast), blend_row(root / "medium", truth, "medium", medium)]
    if args.budget_ratio > 0:
        limit = f"{int(args.budget_ratio * plain['seconds'])}s"
        limited = pipeline(root / "limited", data, ["--preset", "medium", "--time-limit", limit], args.folds)
        rows.append(blend_row(root / "limited", truth, f"medium --time-limit {limit}", limited))
    rows += member_rows(root / "medium", truth, "medium")
    table = pd.DataFrame(rows)
    table["x plain time"] = table["seconds"] / plain["seconds"]
    table["gain over plain"] = table["test (unseen styles)"] - plain["test (unseen styles)"]
    n_train = sum(1 for _ in (data / "train").rglob("*.png"))
    print(f"\n{n_train} train images in {len(CLASSES + GLYPH_CLASSES)} classes (imbalance {args.imbalance:g}:1), "
          f"{len(truth)} test images in unseen styles, {args.folds} folds; torch threads {torch.get_num_threads()}; "
          f"load average at start {start_load[0]:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for tag in ("fast", "medium", "limited"):
        if (root / tag).exists():
            record = json.loads((root / tag / "folds" / "init.json").read_text())
            print(f"{tag}: {record['command']}: planned {record['planned_s']} s for training, "
                  f"members {list(record['members'])}, left out {[d['name'] for d in record['dropped']]}")
    table.to_csv(root / "recipes.csv", index=False)


if __name__ == "__main__":
    main()
