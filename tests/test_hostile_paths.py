"""Hostile names and paths: writes and deletions stay inside the project's generated folders (issue 12,
items 1, 2 and 5), tried through the CLI on tiny generated competitions."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import class_image
from hostile import build_trained, cli, copy_project, error_line, generated_files, new_project
from PIL import Image

from foldblend.config import ConfigError, config_from_dict, load_config
from foldblend.data.find import CompetitionError, load_competition
from foldblend.paths import Project
from foldblend.scanning.run import run_scan

SRC = Path(__file__).resolve().parents[1] / "src" / "foldblend"


@pytest.fixture
def trained(trained_project) -> Path:
    return trained_project  # built once per session (conftest); every test copies it


# ----------------------------------------------------------------------------- 1. experiment names

def test_an_experiment_name_that_leaves_the_project_is_refused_and_deletes_nothing(trained, tmp_path, capsys):
    """The seen attack: `name: ../../outside` made train rmtree `outside/fold_7` ("folds.csv now has 2 folds")."""
    proj = copy_project(trained, tmp_path / "proj")
    victim = tmp_path / "outside" / "fold_7" / "keep.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("not foldblend's")
    (proj / "folds" / "evil.yaml").write_text("name: ../../outside\nmodel: cnn_tiny\nimg_size: 16\nepochs: 1\n")
    capsys.readouterr()
    assert cli(proj, "train", str(proj / "folds" / "evil.yaml"), "--quiet") == 2
    line = error_line(capsys.readouterr().err)
    assert "evil.yaml" in line and "key 'name'" in line and "not a plain name" in line
    assert victim.read_text() == "not foldblend's"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["fold_7"]  # nothing written there either


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "_blend", ".image_cache", "-rf", "a\\b", "x\0y", "é"])
def test_experiment_names_must_be_plain(tmp_path, name):
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'name' .* is not a plain name"):
        config_from_dict({"name": name, "model": "cnn_tiny"}, "folds/exp.yaml")
    assert config_from_dict({"name": "resnet50_v2.1-a"}, "folds/exp.yaml").name == "resnet50_v2.1-a"
    path = tmp_path / "exp.yaml"
    path.write_text("model: cnn_tiny\n")
    with pytest.raises(ConfigError, match="not a plain name"):  # --set name=... too
        load_config(path, ["name=../x"])


def test_a_config_file_name_that_is_not_a_plain_name_says_rename_it(tmp_path):
    path = tmp_path / "my exp.yaml"
    path.write_text("model: cnn_tiny\n")
    with pytest.raises(ConfigError, match="rename the file"):
        load_config(path)


@pytest.mark.parametrize("args", [["submit", "--name", "../../x"], ["submit", "--exp", "../tiny"],
                                  ["blend", "--members", "../../oof/tiny"]])
def test_submit_and_blend_names_are_plain(trained, tmp_path, capsys, args):
    proj = copy_project(trained, tmp_path / "proj")
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    assert cli(proj, *args) == 2
    line = error_line(capsys.readouterr().err)
    assert "not a plain name" in line and args[-1] in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- one removal helper

def test_remove_refuses_paths_that_resolve_outside(tmp_path):
    from foldblend.safety import UnsafePathError, remove

    root, outside = tmp_path / "models", tmp_path / "outside"
    (root / "exp" / "fold_0").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim.txt").write_text("keep")
    (root / "link").symlink_to(outside, target_is_directory=True)
    for bad in (outside / "victim.txt", root / ".." / "outside" / "victim.txt", root / "link" / "victim.txt",
                root, root / "exp" / "..", tmp_path):
        with pytest.raises(UnsafePathError, match="refusing to delete"):
            remove(bad, inside=root)
    assert (outside / "victim.txt").read_text() == "keep"
    assert remove(root / "link", inside=root)           # the link itself, never what it points to
    assert (outside / "victim.txt").read_text() == "keep" and not (root / "link").exists()
    assert remove(root / "exp", inside=root) and not (root / "exp").exists()
    assert not remove(root / "gone", inside=root)       # already gone: nothing to do


def test_every_deletion_in_the_code_base_goes_through_the_helper():
    calls = re.compile(r"rmtree\(|\.unlink\(|os\.remove\(|os\.unlink\(|\.rmdir\(|os\.rmdir\(")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p.name != "safety.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if calls.search(line)]
    assert offenders == []


# ----------------------------------------------------------------------------- 2. input/ stays input/

@pytest.mark.parametrize("key,value", [("sample_submission", "../elsewhere/sample.csv"),
                                       ("train_csv", "../elsewhere/train.csv"),
                                       ("train_dir", "../elsewhere/train"), ("test_dir", "ABS/testset")])
def test_competition_yaml_paths_outside_input_are_refused(tmp_path, key, value):
    proj = new_project(tmp_path / "proj")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "train").mkdir(parents=True)
    (elsewhere / "testset").mkdir()
    (elsewhere / "sample.csv").write_text((proj / "input" / "sample_submission.csv").read_text())
    (elsewhere / "train.csv").write_text("id,label\na,b\n")
    value = value.replace("ABS", str(elsewhere))
    (proj / "input" / "competition.yaml").write_text(f"n_splits: 2\n{key}: {value}\n")
    with pytest.raises(CompetitionError, match=rf"competition\.yaml: {key} .* points outside input/"):
        load_competition(proj / "input")


def _outside_images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(class_image(1, np.random.default_rng(i), (24, 24))).save(folder / f"o{i}.png")
    return folder


@pytest.mark.parametrize("linked", ["train/class_1", "testset", "sample_submission.csv"])
def test_symlinks_out_of_input_are_refused(tmp_path, capsys, linked):
    proj = new_project(tmp_path / "proj")
    target = proj / "input" / linked
    moved = tmp_path / "elsewhere" / target.name
    moved.parent.mkdir()
    os.replace(target, moved)
    target.symlink_to(moved, target_is_directory=moved.is_dir())
    capsys.readouterr()
    assert cli(proj, "scan", "--quiet") == 2
    line = error_line(capsys.readouterr().err)
    assert "outside input/" in line and "symbolic link" in line and linked.split("/")[0] in line


def test_a_symlinked_image_file_is_unreadable_like_any_bad_file(tmp_path):
    proj = new_project(tmp_path / "proj")
    outside = _outside_images(tmp_path / "elsewhere")
    (proj / "input" / "train" / "class_1" / "linked.png").symlink_to(outside / "o0.png")
    (proj / "input" / "testset" / "t000.png").unlink()
    (proj / "input" / "testset" / "t000.png").symlink_to(outside / "o1.png")
    inside = proj / "input" / "train" / "class_0" / "same_folder_link.png"
    inside.symlink_to(proj / "input" / "train" / "class_0" / "class_0_000.png")  # a link within input/ is fine
    table = run_scan(Project.at(proj), progress=False).set_index("image")
    for name in ("train/class_1/linked.png", "testset/t000.png"):
        assert not table.loc[name, "ok"] and "outside input/" in table.loc[name, "why"]
    assert table.loc["train/class_0/same_folder_link.png", "ok"]
    assert cli(proj, "folds", "--quiet") == 0 and cli(proj, "train", "--quiet") == 0
    assert cli(proj, "blend") == 0 and cli(proj, "submit") == 0  # every test id still gets a row
    sub = next(p for p in (proj / "submissions").glob("*.csv") if p.name != "log.csv")
    assert len(sub.read_text().splitlines()) == 10


def test_input_itself_may_be_a_link_to_the_download(tmp_path):
    download = new_project(tmp_path / "download") / "input"
    proj = tmp_path / "proj"
    (proj / "folds").mkdir(parents=True)
    (proj / "input").symlink_to(download, target_is_directory=True)
    comp = load_competition(proj / "input")
    assert len(comp.train) == 36 and len(comp.test) == 9
    assert run_scan(Project.at(proj), progress=False)["ok"].all()


# ----------------------------------------------------------------------------- 5. file modes

def test_generated_files_get_the_mode_open_gives_under_the_umask(tmp_path):
    """mkstemp's -rw------- made reports and CSVs unreadable to anyone else; a plain open() applies the umask."""
    old = os.umask(0o027)
    try:
        build_trained(tmp_path / "proj")
        assert cli(tmp_path / "proj", "report") == 0
    finally:
        os.umask(old)
    files = generated_files(tmp_path / "proj")
    kinds = {p.suffix for p in files}
    assert {".csv", ".json", ".npz", ".pt", ".npy", ".html"} <= kinds
    modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, modes
