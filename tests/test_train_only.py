"""A labelled folder is enough: train-only competitions end to end through the CLI, with a held-out test
split, natural class order, duplicates, an exported bundle scored elsewhere, and out-of-domain drops."""
from __future__ import annotations

import json
import re
import shutil

import imagegen as gen
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CONFIG, class_image
from PIL import Image

from foldblend.cli import main

pytestmark = pytest.mark.slow

NAMES = ["L2_2", "L2_3", "L2_10"]  # natural order; lexically L2_10 would come first


def run(root, *args) -> None:
    assert main(["--root", str(root), *args]) == 0, f"foldblend {' '.join(args)} failed"


def make_train_only(root, nested: bool, per_class: int = 14, seed: int = 0):
    """input/<class>/*.png (flat) or input/dataset/training/<class>/*.png (nested), with exact duplicates."""
    rng = np.random.default_rng(seed)
    base = root / "input" / ("dataset/training" if nested else "")
    for c, name in enumerate(NAMES):
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(20, 36)), int(rng.integers(20, 36)))
            Image.fromarray(class_image(c, rng, size)).save(base / name / f"{name}_{i:02d}.png")
        for i in range(2):  # the same picture saved twice: they must stay on one side of every split
            shutil.copy(base / name / f"{name}_{i:02d}.png", base / name / f"copy_of_{i:02d}.png")
    (root / "folds").mkdir(exist_ok=True)
    (root / "folds" / "tiny.yaml").write_text(TINY_CONFIG)
    return base


def number(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return found.group(1)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_train_only_folder_runs_every_stage_with_an_honest_holdout(tmp_path, capsys, monkeypatch, nested):
    root = tmp_path / "project"
    make_train_only(root, nested)
    # nested: everything in competition.yaml; flat: the holdout from the command line
    (root / "input" / "competition.yaml").write_text(
        "n_splits: 2\nclass_order: natural\n" + ("holdout: 0.2\n" if nested else ""))

    run(root, "scan", "--quiet")
    out = capsys.readouterr().out
    assert "no test set" in out and "0 L2_2" in out and "1 L2_3" in out and "2 L2_10" in out
    run(root, "folds", "--quiet", *([] if nested else ["--holdout", "0.2"]))
    folds = pd.read_csv(root / "folds" / "folds.csv", keep_default_na=False)
    held = folds[folds["fold"] == -1]
    assert 0.15 <= len(held) / len(folds) <= 0.25 and set(held["label"]) == set(NAMES)
    for group, rows in folds.groupby("group"):  # duplicates: one side of the holdout, one fold
        assert rows["fold"].nunique() == 1, rows
    run(root, "folds", "--quiet")  # a later plain run keeps the split (and its holdout)
    assert pd.read_csv(root / "folds" / "folds.csv", keep_default_na=False).equals(folds)

    # training: record which images every fold's loader draws from
    from foldblend.members.cnn import train as cnn_train

    trained_on: list[set] = []
    real_loader = cnn_train.train_loader

    def spy(images, index, *args, **kwargs):
        trained_on.append({int(i) for i in index})
        return real_loader(images, index, *args, **kwargs)

    monkeypatch.setattr(cnn_train, "train_loader", spy)
    run(root, "train", "--quiet")
    member = root / "oof" / "tiny"
    with np.load(member / "oof.npz") as z:
        oof_ids = z["ids"].astype(str)
    with np.load(member / "holdout.npz") as z:
        holdout_ids, holdout_logits = z["ids"].astype(str), z["logits"]
    with np.load(member / "test.npz") as z:
        assert z["logits"].shape == (2, 2, 0, 3) and len(z["ids"]) == 0  # no test set: M = 0 rows
    assert sorted(holdout_ids) == sorted(held["image"]) and holdout_logits.shape == (2, 2, len(held), 3)
    assert not set(oof_ids) & set(holdout_ids) and len(oof_ids) + len(held) == len(folds)
    assert trained_on and all(oof_ids[sorted(rows)].size for rows in trained_on)
    assert not set().union(*[set(oof_ids[sorted(rows)]) for rows in trained_on]) & set(holdout_ids)
    for k in (0, 1):  # each fold model's own files: the rows it held out are exactly its fold
        with np.load(root / "models" / "tiny" / f"fold_{k}" / "preds.npz") as z:
            assert set(oof_ids[z["val_index"]]) == set(folds.loc[folds["fold"] == k, "image"])
            assert z["holdout_logits"].shape == (2, len(held), 3)

    run(root, "blend", "--tta", "weighted", "--bias")
    capsys.readouterr()
    run(root, "submit")
    out = capsys.readouterr().out
    assert "nothing to submit" in out and "foldblend predict" in out and "foldblend evaluate" in out
    assert not (root / "submissions").exists()
    run(root, "summary")
    summary = capsys.readouterr().out
    assert "no test set" in summary and ("dataset/training/<class>/" if nested else "./<class>/") in summary
    holdout = number(r"holdout (\d\.\d{4}) \(", summary)
    blend = json.loads((root / "oof" / "_blend" / "blend.json").read_text())
    assert f"{blend['holdout']['blend']['macro_f1']:.4f}" == holdout and blend["holdout"]["n_images"] == len(held)
    run(root, "report")
    assert "holdout" in (root / "oof" / "report.html").read_text()

    # export, then score the holdout with the bundle alone, from another folder
    run(root, "export", "--exp", "blend", str(root / "export" / "blend"))
    bundle = tmp_path / "shipped"
    shutil.copytree(root / "export" / "blend", bundle)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == ["bundle.json", "weights/tiny/fold_0.safetensors", "weights/tiny/fold_1.safetensors"]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["classes"] == NAMES and meta["members"][0]["kind"] == "cnn"
    assert meta["blend"]["biases"] == pytest.approx(blend["biases"])
    holdout_folder = tmp_path / "holdout"
    for image, label in zip(held["image"], held["label"]):
        (holdout_folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "input" / image, holdout_folder / label / image.replace("/", "__"))
    elsewhere = tmp_path / "elsewhere"
    capsys.readouterr()
    run(elsewhere, "evaluate", "--data", str(holdout_folder), "--exp", str(bundle))
    out = capsys.readouterr().out
    assert number(r"macro-F1\s+(\d\.\d{4})", out) == holdout  # the summary's number, exactly
    assert "macro avg" in out and "micro-F1" in out and "2 L2_10" in out
    predictions = pd.read_csv(elsewhere / "oof" / "eval_shipped" / "predictions.csv")
    with np.load(root / "oof" / "_blend" / "blend.npz") as z:
        own = dict(zip(z["holdout_ids"].astype(str), z["holdout_probs"]))
    for image, predicted, prob in zip(predictions["image"], predictions["predicted"], predictions["prob"]):
        probs = own[image.split("/", 1)[1].replace("__", "/")]
        assert NAMES[int(probs.argmax())] == predicted and prob == pytest.approx(probs.max(), abs=1e-5)

    # the held-out split as a CSV of path,label, from the project itself, gives the same number
    run(root, "evaluate", "--data", str(root / "folds" / "holdout.csv"), "--exp", "blend")
    assert number(r"macro-F1\s+(\d\.\d{4})", capsys.readouterr().out) == holdout
    run(elsewhere, "predict", "--images", str(holdout_folder), "--exp", str(bundle))
    table = pd.read_csv(elsewhere / "oof" / "predict_shipped.csv")
    assert len(table) == len(held) and set(table["predicted"]) <= set(NAMES)


def test_ood_drop_leaves_photographs_out_and_lists_them(tmp_path, capsys):
    """Flat illustrations with a few photographs mixed in: the data-chosen threshold drops the photographs,
    folds.json records them, eda.html shows them; `ood: report` keeps them and says so."""
    root = tmp_path
    for c, name in enumerate(["inked", "flat"]):
        for i in range(40):
            gen.save(root / "input" / "training" / name / f"{i:02d}.png", gen.shapes(c * 1000 + i, 48))
    photos = [f"training/{'inked' if k % 2 else 'flat'}/photo_{k}.png" for k in range(2)]
    for k, rel in enumerate(photos):
        gen.save(root / "input" / rel, gen.natural(50 + k, 96))
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    run(root, "scan", "--quiet")
    out = capsys.readouterr().out
    assert "out-of-domain threshold" in out and "kept (ood: report" in out
    assert "Would be dropped as out-of-domain" in (root / "folds" / "eda.html").read_text()
    run(root, "folds", "--quiet")
    assert set(photos) <= set(pd.read_csv(root / "folds" / "folds.csv")["image"])

    (root / "input" / "competition.yaml").write_text("n_splits: 2\nood: drop\n")
    run(root, "scan", "--quiet")
    run(root, "folds", "--quiet")
    folds = pd.read_csv(root / "folds" / "folds.csv")
    sidecar = json.loads((root / "folds" / "folds.json").read_text())
    dropped = {row["image"] for row in sidecar["left_out"] if row["reason"] == "out_of_domain"}
    assert set(photos) <= dropped and not dropped & set(folds["image"])
    assert len(dropped) <= 4, dropped  # the photographs, and at most a couple of unusual drawings
    assert sidecar["ood"]["mode"] == "drop" and sidecar["ood"]["threshold"] is not None
    eda = (root / "folds" / "eda.html").read_text()
    assert "Dropped as out-of-domain" in eda and all(p in eda for p in photos)


def test_assembly_reads_fold_predictions_made_before_holdouts_existed(tmp_path):
    from foldblend.artifacts import load_member
    from foldblend.members.assemble import FoldPredictions, assemble_member

    rng = np.random.default_rng(0)
    old = [FoldPredictions(np.array([0, 1]), rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 0, 3)), ["identity"]),
           FoldPredictions(np.array([2, 3]), rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 0, 3)), ["identity"])]
    common = dict(ids=list("abcd"), labels=np.array([0, 1, 2, 0]), fold=np.array([0, 0, 1, 1]),
                  classes=["x", "y", "z"], test_ids=[], test_ok=np.zeros(0, bool))
    assemble_member(tmp_path / "m", old, **common)  # no holdout, no holdout_logits: H = 0
    member = load_member(tmp_path / "m")
    assert member.holdout_logits.shape == (2, 1, 0, 3) and member.test_logits.shape == (2, 1, 0, 3)
    with pytest.raises(ValueError, match="do not cover the 2 held-out images"):
        assemble_member(tmp_path / "n", old, **common, holdout_ids=["e", "f"], holdout_labels=[0, 1])
