"""End to end through the real CLI stages on tiny generated competitions (CPU, 1 epoch, seconds)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from foldblend.cli import main
from foldblend.paths import Project

pytestmark = pytest.mark.slow


def run(root, *args) -> None:
    assert main(["--root", str(root), *args]) == 0, f"foldblend {' '.join(args)} failed"


def pipeline(root) -> None:
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"], ["blend"], ["submit"], ["summary"]):
        run(root, *stage)


def only_submission(root):
    files = [p for p in (root / "submissions").glob("*.csv") if p.name != "log.csv"]
    assert len(files) == 1, files
    return files[0]


def test_pipeline_writes_a_valid_submission_and_reruns_as_a_no_op(tiny_project):
    pipeline(tiny_project)
    project = Project.at(tiny_project)
    sample = (tiny_project / "input" / "sample_submission.csv").read_text().splitlines()
    sub_path = only_submission(tiny_project)
    sub = sub_path.read_text().splitlines()
    assert sub[0] == sample[0] == "Id,Expected"
    assert [line.split(",")[0] for line in sub[1:]] == [line.split(",")[0] for line in sample[1:]]
    assert {line.split(",")[1] for line in sub[1:]} <= {"class_0", "class_1", "class_2"}

    # the member contract
    with np.load(project.oof_dir("tiny") / "oof.npz") as z:
        folds = pd.read_csv(project.folds_csv)
        assert list(z["ids"]) == folds["image"].tolist()
        assert z["logits"].shape == (2, 36, 3) and z["logits"].dtype == np.float32
        assert list(z["views"]) == ["identity", "hflip"]
    with np.load(project.oof_dir("tiny") / "test.npz") as z:
        assert z["logits"].shape == (2, 2, 9, 3)
        assert list(z["ids"]) == [line.split(",")[0] for line in sample[1:]]
    scores = json.loads((project.oof_dir("tiny") / "scores.json").read_text())
    assert set(scores["per_view"]) == {"identity", "hflip"} and set(scores["per_fold"]) == {"0", "1"}
    assert scores["classes"] == ["class_0", "class_1", "class_2"]

    # a second run retrains nothing: every fold's weights keep their mtime
    weights = sorted((tiny_project / "models" / "tiny").glob("fold_*/best.pt"))
    before = [os.stat(p).st_mtime_ns for p in weights]
    run(tiny_project, "train", "--quiet")
    assert [os.stat(p).st_mtime_ns for p in weights] == before

    # a changed config retrains
    cfg = tiny_project / "folds" / "tiny.yaml"
    cfg.write_text(cfg.read_text().replace("lr: 0.01", "lr: 0.02"))
    run(tiny_project, "train", "--quiet")
    assert [os.stat(p).st_mtime_ns for p in weights] != before


def test_messy_competition_still_gets_a_complete_submission(tiny_project):
    """Broken, junk and duplicated files: reported, left out of training, and every test id predicted."""
    inp = tiny_project / "input"
    good = inp / "train" / "class_1" / "class_1_000.png"
    (inp / "train" / "class_1" / "broken.png").write_bytes(good.read_bytes()[:60])  # truncated
    (inp / "train" / "class_0" / "notes.txt").write_text("not an image")
    (inp / "train" / "class_0" / ".DS_Store").write_bytes(b"\0\1\2")
    dup = inp / "train" / "class_2" / "class_2_copy.png"
    dup.write_bytes((inp / "train" / "class_2" / "class_2_000.png").read_bytes())
    (inp / "testset" / "t004.png").write_bytes(b"")  # an unreadable test image
    pipeline(tiny_project)

    folds = pd.read_csv(tiny_project / "folds" / "folds.csv")
    assert "train/class_1/broken.png" not in set(folds["image"])
    a, b = (folds.set_index("image").loc[f"train/class_2/{n}", "fold"] for n in ("class_2_000.png", "class_2_copy.png"))
    assert a == b, "an exact duplicate must sit in the same fold as its original"

    sub = pd.read_csv(only_submission(tiny_project), dtype=str)
    assert len(sub) == 9 and sub["Expected"].notna().all()
    prior_class = folds["label"].value_counts().idxmax()
    assert sub.set_index("Id").loc["t004.png", "Expected"] == prior_class
    scan = pd.read_csv(tiny_project / "folds" / "scan.csv", keep_default_na=False)
    why = scan.set_index("image")["why"]
    assert why["train/class_1/broken.png"] and why["testset/t004.png"]
    assert (tiny_project / "folds" / "eda.html").exists()
