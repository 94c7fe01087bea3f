"""The split artifact: exact, stratified, grouped, reused while its inputs are unchanged."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from foldblend.data.split import (
    FoldsError,
    ensure_folds,
    folds_fingerprint,
    make_folds,
    read_folds,
    settings_path,
    write_folds,
)


def table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"train/{c}/{i:03d}.png", c) for c, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image", "label"])


TABLE = table({"a": 23, "b": 17, "c": 9, "NA": 6})


def test_columns_and_row_order():
    df = make_folds(TABLE, n_splits=5, seed=1)
    assert list(df.columns) == ["image", "label", "group", "fold"]
    assert df["image"].tolist() == TABLE["image"].tolist()
    assert df["group"].tolist() == list(range(len(TABLE)))
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]


def test_deterministic_for_a_seed(tmp_path):
    write_folds(make_folds(TABLE, 5, seed=7), tmp_path / "a.csv")
    write_folds(make_folds(TABLE, 5, seed=7), tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert not make_folds(TABLE, 5, seed=8)["fold"].equals(make_folds(TABLE, 5, seed=7)["fold"])


@pytest.mark.parametrize("n_splits", [2, 3, 5])
def test_stratified_counts_differ_by_at_most_one(n_splits):
    df = make_folds(TABLE, n_splits=n_splits, seed=0)
    counts = pd.crosstab(df["label"], df["fold"])
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
    assert counts.sum(axis=1).to_dict() == {"a": 23, "b": 17, "c": 9, "NA": 6}


def test_groups_never_span_folds():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 25, size=len(TABLE)).astype(str)  # non-contiguous string groups
    df = make_folds(TABLE, n_splits=4, seed=3, groups=groups)
    assert (df.groupby("group")["fold"].nunique() == 1).all()
    assert df["group"].nunique() == len(np.unique(groups))
    # the same partition in other labels gives the same folds
    relabelled = np.array(["g" + g for g in groups])
    assert make_folds(TABLE, 4, seed=3, groups=relabelled)["fold"].equals(df["fold"])


def test_all_unique_groups_are_plain_stratified():
    unique = np.arange(len(TABLE))[::-1]
    assert make_folds(TABLE, 5, 2, groups=unique).equals(make_folds(TABLE, 5, 2))


def test_small_classes_warn_by_name_but_still_fold():
    t = table({"big": 20, "tiny": 2})
    with pytest.warns(UserWarning, match=r"tiny \(2\)") as record:
        df = make_folds(t, n_splits=5, seed=0)
    assert not any("big" in str(w.message) for w in record)
    assert (df["fold"] >= 0).all()
    assert df[df["label"] == "tiny"]["fold"].nunique() == 2


def test_fewer_images_than_folds_is_an_error():
    with pytest.raises(FoldsError, match="only 3 train image"):
        make_folds(table({"a": 2, "b": 1}), n_splits=5)


def test_fewer_groups_than_folds_is_an_error():
    with pytest.raises(FoldsError, match="only 2 distinct image group"):
        make_folds(TABLE, n_splits=5, groups=np.arange(len(TABLE)) % 2)


def test_read_roundtrip_keeps_string_labels(tmp_path):
    path = tmp_path / "folds.csv"
    df = make_folds(TABLE, 5, seed=0)
    write_folds(df, path)
    back = read_folds(path)
    assert back.equals(df)
    assert "NA" in set(back["label"])  # not turned into NaN
    assert folds_fingerprint(back) == folds_fingerprint(df)


def test_read_errors_name_file_and_fix(tmp_path):
    with pytest.raises(FoldsError, match=r"folds\.csv: not found.*foldblend folds"):
        read_folds(tmp_path / "folds.csv")
    (tmp_path / "folds.csv").write_text("image,label\nx,a\n")
    with pytest.raises(FoldsError, match=r"missing column.*'group', 'fold'.*foldblend folds"):
        read_folds(tmp_path / "folds.csv")
    (tmp_path / "folds.csv").write_text("image,label,group,fold\nx,a,0,0\ny,a,1,2\n")
    with pytest.raises(FoldsError, match="every fold used"):
        read_folds(tmp_path / "folds.csv")


def test_fingerprint_tracks_content():
    df = make_folds(TABLE, 5, seed=0)
    moved = df.copy()
    moved.loc[0, "fold"] = (moved.loc[0, "fold"] + 1) % 5
    assert folds_fingerprint(df) == folds_fingerprint(df.copy())
    assert folds_fingerprint(moved) != folds_fingerprint(df)


def test_ensure_folds_reuses_then_remakes(tmp_path, capsys):
    path = tmp_path / "folds" / "folds.csv"
    df1, changed = ensure_folds(TABLE, path, n_splits=5, seed=0)
    assert changed and path.is_file() and settings_path(path).name == "folds.json"
    assert "wrote folds.csv" in capsys.readouterr().out
    old = 1_000_000_000
    os.utime(path, (old, old))

    df2, changed = ensure_folds(TABLE, path, n_splits=5, seed=0)
    assert not changed and df2.equals(df1)
    assert path.stat().st_mtime == old
    out = capsys.readouterr().out
    assert "reusing" in out and "all" in out  # the per-fold class-count table

    for kwargs in ({"n_splits": 4, "seed": 0}, {"n_splits": 5, "seed": 1}):
        _, changed = ensure_folds(TABLE, path, verbose=False, **kwargs)
        assert changed
    bigger = pd.concat([TABLE, table({"d": 5})], ignore_index=True)
    df3, changed = ensure_folds(bigger, path, n_splits=5, seed=1, verbose=False)
    assert changed and len(read_folds(path)) == len(bigger)
    relabelled = bigger.assign(label=bigger["label"].replace({"d": "e"}))
    assert ensure_folds(relabelled, path, n_splits=5, seed=1, verbose=False)[1]
    groups = np.arange(len(bigger)) // 2
    assert ensure_folds(relabelled, path, n_splits=5, seed=1, groups=groups, verbose=False)[1]
    assert not ensure_folds(relabelled, path, n_splits=5, seed=1, groups=groups, verbose=False)[1]


def test_ensure_folds_remakes_a_hand_edited_or_orphaned_split(tmp_path):
    path = tmp_path / "folds.csv"
    ensure_folds(TABLE, path, 5, 0, verbose=False)
    path.write_text(path.read_text().replace(",0\n", ",1\n", 1))
    assert ensure_folds(TABLE, path, 5, 0, verbose=False)[1]
    settings_path(path).unlink()  # killed between folds.csv and folds.json
    assert ensure_folds(TABLE, path, 5, 0, verbose=False)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ensure_folds(TABLE, path, 5, 0, verbose=False)[1]


# ----------------------------------------------------------------------------- the held-out test split

BIG = table({"a": 60, "b": 40, "c": 25, "d": 15})


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.3])
def test_holdout_is_stratified_sized_and_outside_every_fold(fraction):
    df = make_folds(BIG, n_splits=4, seed=3, holdout=fraction)
    held = df["fold"] == -1
    assert abs(held.mean() - fraction) < 0.03
    # each class about the same share: p of q stratified parts, each within one image of its share
    parts = {0.2: 1, 0.25: 1, 0.3: 3}[fraction]
    off = df[held]["label"].value_counts() - fraction * BIG["label"].value_counts()
    assert (off.abs() <= parts).all(), off
    assert sorted(df.loc[~held, "fold"].unique()) == [0, 1, 2, 3]
    again = make_folds(BIG, n_splits=4, seed=3, holdout=fraction)
    assert again.equals(df)  # made from the seed alone


def test_holdout_keeps_duplicate_groups_whole_and_classes_trainable():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 45, len(BIG))  # ~3 images per group
    df = make_folds(BIG, n_splits=3, seed=1, groups=groups, holdout=0.2)
    held_groups = set(df.loc[df["fold"] == -1, "group"])
    assert held_groups and not held_groups & set(df.loc[df["fold"] >= 0, "group"])
    lonely = table({"a": 30, "b": 30, "solo": 1})  # one image: held out, it could never be learned
    for seed in range(6):
        df = make_folds(lonely, n_splits=2, seed=seed, holdout=0.2)
        assert (df.loc[df["label"] == "solo", "fold"] >= 0).all()


def test_holdout_errors_and_read_back(tmp_path):
    with pytest.raises(FoldsError, match="needs at least 5 distinct image groups"):
        make_folds(table({"a": 2, "b": 2}), n_splits=2, holdout=0.2)
    with pytest.raises(FoldsError, match="below 1/20"):
        make_folds(BIG, n_splits=2, holdout=0.01)
    write_folds(make_folds(BIG, 3, seed=0, holdout=0.2), tmp_path / "folds.csv")
    back = read_folds(tmp_path / "folds.csv")
    assert (back["fold"] == -1).sum() > 0 and set(back["fold"]) == {-1, 0, 1, 2}


def test_holdout_changes_remake_the_split_and_zero_keeps_old_sidecars(tmp_path):
    path = tmp_path / "folds.csv"
    plain, changed = ensure_folds(BIG, path, 3, 0, verbose=False)
    assert changed and "holdout" not in json.loads(settings_path(path).read_text())
    assert not ensure_folds(BIG, path, 3, 0, verbose=False, holdout=0.0)[1]
    held, changed = ensure_folds(BIG, path, 3, 0, verbose=False, holdout=0.2)
    assert changed and (held["fold"] == -1).any()
    sidecar = json.loads(settings_path(path).read_text())
    assert sidecar["holdout"] == 0.2 and sidecar["n_holdout"] == int((held["fold"] == -1).sum())
    assert not ensure_folds(BIG, path, 3, 0, verbose=False, holdout=0.2)[1]
    assert ensure_folds(BIG, path, 3, 0, verbose=False, holdout=0.25)[1]
