"""User groups (groups.csv, or a group column in the train CSV) win over every automatic grouping."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import make_competition

from foldblend.data.find import load_competition
from foldblend.data.groups import GroupsError, read_groups_file, user_groups, with_user_groups
from foldblend.paths import Project
from foldblend.stages.folds import run_folds

TRAIN = ["train/a/x1.png", "train/a/x2.png", "train/b/y1.png", "train/b/sub/y1.png"]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["train/a/x1.png", "a/x1.png", "x1.png", "x1"])
def test_an_image_may_be_named_by_path_file_name_or_stem(tmp_path, name):
    path = _write(tmp_path / "groups.csv", f"image,group\n{name},patient7\n")
    assert read_groups_file(path, TRAIN) == {0: "patient7"}


@pytest.mark.parametrize("text,message", [
    ("image,group\nnope.png,g\n", "not train images"),
    ("image,group\ny1.png,g\n", "match several train images"),           # two files called y1.png
    ("image,group\nx1.png,g\ntrain/a/x1.png,h\n", "in two groups"),
    ("file,patient\nx1.png,g\n", "needs the columns image,group"),
    ("image,group\nx1.png,\n", "empty group"),
])
def test_bad_groups_files_name_the_file_and_the_fix(tmp_path, text, message):
    path = _write(tmp_path / "groups.csv", text)
    with pytest.raises(GroupsError, match=message) as e:
        read_groups_file(path, TRAIN)
    assert str(path) in str(e.value)


def test_user_groups_win_and_unlisted_images_keep_automatic_groups():
    automatic = np.array([0, 0, 1, 1, 2])          # pHash: rows 0,1 copies; rows 2,3 copies
    user = np.array(["p1", "p2", None, None, "p1"], dtype=object)
    groups = with_user_groups(automatic, user)
    assert groups[0] == groups[4]                  # the user's group, across pHash groups
    assert groups[0] != groups[1]                  # the user split two copies: the user wins
    assert groups[2] == groups[3] and groups[2] not in (groups[0], groups[1])
    assert (with_user_groups(automatic, None) == automatic).all()


def test_a_group_column_in_the_train_csv(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(4):
        shutil.copy(__file__, tmp_path / "train" / "ignored.txt")  # junk does not matter
        from PIL import Image

        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "train" / f"im{i}.png")
    _write(tmp_path / "train.csv", "id,label,group\nim0,cat,A\nim1,dog,A\nim2,cat,\nim3,dog,B\n")
    comp = load_competition(tmp_path)
    assert list(comp.classes) == ["cat", "dog"]       # the group column is not taken for the label
    groups = user_groups(comp)
    assert groups[0] == groups[1] == "A" and pd.isna(groups[2]) and groups[3] == "B"


@pytest.mark.slow
def test_the_folds_keep_each_user_group_in_one_fold(tmp_path):
    make_competition(tmp_path, n_classes=3, per_class=12)
    inp = tmp_path / "input"
    _write(inp / "competition.yaml", "n_splits: 3\nembeddings: false\n")
    # twin files (identical bytes: one pHash group) that the user says are different patients
    shutil.copy(inp / "train/class_0/class_0_000.png", inp / "train/class_0/twin.png")
    comp = load_competition(inp)
    images = comp.train["image"].tolist()
    rows = ["image,group"] + [f"{image},patient{i % 6}" for i, image in enumerate(images)
                              if "twin" not in image and not image.endswith("class_0_000.png")]
    rows += ["train/class_0/class_0_000.png,twinA", "twin.png,twinB"]
    _write(inp / "groups.csv", "\n".join(rows) + "\n")
    folds = run_folds(Project.at(tmp_path), progress=False)
    for g, part in folds.groupby("group"):
        assert part["fold"].nunique() == 1
    by_image = folds.set_index("image")
    patients = folds[folds["image"].str.contains("_0(?:0[1-9]|1[01]).png", regex=True)]
    assert patients["group"].nunique() == 6          # 11 images of each class among 6 patients
    assert by_image.loc["train/class_0/twin.png", "group"] != by_image.loc["train/class_0/class_0_000.png", "group"]
    recorded = json.loads((tmp_path / "folds" / "folds.json").read_text())["grouping"]
    assert recorded["user_groups"] == len(images)
