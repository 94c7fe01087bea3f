"""The demo competition: a real-looking layout, deterministic, rebuilt when interrupted."""
from __future__ import annotations

import hashlib
import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from foldblend.data.demo import BUILDING_MARKER, COMPLETE_MARKER, build_demo, is_empty_input
from foldblend.data.find import load_competition
from foldblend.paths import Project
from foldblend.stages.summary import print_summary


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "input"
    build_demo(root, seed=0)
    return root


def test_demo_is_a_detectable_competition(demo):
    comp = load_competition(demo)
    assert comp.classes == [str(d) for d in range(10)]
    assert comp.layout.startswith("folder per class: train/<class>/")
    assert comp.test_labels_path == demo / "demo_test_labels.csv"
    assert comp.configured == {"test_labels"}  # named in the demo's competition.yaml, not known to the core
    total = len(comp.train) + len(comp.test)
    assert 1200 <= total <= 1800
    assert abs(len(comp.test) / total - 0.25) < 0.01
    assert comp.ignored == []


def test_sample_and_labels_files(demo):
    sample = pd.read_csv(demo / "sample_submission.csv", dtype=str)
    labels = pd.read_csv(demo / "demo_test_labels.csv", dtype=str)
    assert list(sample.columns) == ["Id", "Expected"] == list(labels.columns)
    assert sample["Id"].tolist() == labels["Id"].tolist()
    assert sample["Id"].iloc[0] == "img_0001.png"
    assert set(sample["Expected"]) == {"0"}
    assert set(labels["Expected"]) == {str(d) for d in range(10)}
    assert sorted(p.name for p in (demo / "testset").iterdir()) == sorted(sample["Id"])


def test_mildly_imbalanced(demo):
    counts = load_competition(demo).train["label"].value_counts()
    assert 0.3 < counts.min() / counts.max() < 0.7


def test_images_vary_in_size_and_are_rgb(demo):
    files = sorted((demo / "train" / "3").iterdir())[:40]
    sizes = set()
    for p in files:
        with Image.open(p) as im:
            assert im.mode == "RGB"
            assert 20 <= min(im.size) and max(im.size) <= 48
            sizes.add(im.size)
    assert len(sizes) > 10
    assert any(w != h for w, h in sizes)


def test_is_empty_input(tmp_path):
    assert is_empty_input(tmp_path / "missing")
    (tmp_path / ".gitkeep").write_text("")
    assert is_empty_input(tmp_path)
    (tmp_path / "train.csv").write_text("id,label\n")
    assert not is_empty_input(tmp_path)


def test_deterministic_noop_and_interrupted_rebuild(demo, tmp_path):
    other = tmp_path / "input"
    build_demo(other, seed=0)
    assert digest(other) == digest(demo)

    old = 1_000_000_000
    os.utime(other / "sample_submission.csv", (old, old))
    build_demo(other, seed=0)  # complete and same parameters: nothing rewritten
    assert (other / "sample_submission.csv").stat().st_mtime == old

    # killed mid-move: marker gone, building marker present, part of the files missing
    (other / COMPLETE_MARKER).unlink()
    (other / BUILDING_MARKER).write_text("")
    (other / "sample_submission.csv").unlink()
    (other / "testset" / "img_0003.png").unlink()
    build_demo(other, seed=0)
    assert digest(other) == digest(demo)
    assert not (other / BUILDING_MARKER).exists()
    assert not list(tmp_path.glob(".input.demo-*"))  # no temporary folder left behind


def test_user_data_is_never_overwritten(demo, tmp_path):
    user = tmp_path / "input"
    user.mkdir()
    (user / "train.csv").write_text("id,label\n")
    with pytest.raises(ValueError, match="already holds files"):
        build_demo(user)
    assert (user / "train.csv").read_text() == "id,label\n"


def test_summary_prints_the_true_test_score_from_test_labels(demo, tmp_path, capsys):
    from sklearn.metrics import f1_score

    project = Project(tmp_path)
    shutil.copytree(demo, project.input)
    truth = pd.read_csv(demo / "demo_test_labels.csv", dtype=str)
    guess = truth.assign(Expected=["0" if i % 7 == 0 else e for i, e in enumerate(truth["Expected"])])
    project.submissions.mkdir()
    guess.to_csv(project.submissions / "sub.csv", index=False)
    (project.submissions / "log.csv").write_text("file,time,cv,lb,format,status\nsub.csv,t,0.9,,label,written\n")
    print_summary(project)
    score = f1_score(truth["Expected"], guess["Expected"], average="macro")
    assert f"demo only - true test macro-F1 of that file (held-back labels): {score:.4f}" in capsys.readouterr().out
    (project.input / "competition.yaml").write_text("n_splits: 5\n")  # no test_labels: no test score
    print_summary(project)
    assert "true test macro-F1" not in capsys.readouterr().out


def test_a_demo_built_before_competition_yaml_gets_it(demo, tmp_path):
    other = tmp_path / "input"
    shutil.copytree(demo, other)
    (other / "competition.yaml").unlink()
    build_demo(other, seed=0)
    assert digest(other) == digest(demo)
