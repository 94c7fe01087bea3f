from __future__ import annotations

import os

import imagegen as gen
import numpy as np
import pandas as pd
import pytest

from foldblend.scanning import inventory as scan
from foldblend.scanning.inventory import COLUMNS, scan_images, scan_summary


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "input"
    paths = [gen.save(root / "train" / "cat" / f"{i}.jpg", gen.scene(i, 40), quality=90) for i in range(4)]
    paths.append(gen.save(root / "train" / "dög" / "Ünï.PNG", gen.shapes(9, 24)))
    paths.append(gen.cmyk_jpeg(root / "train" / "dög" / "cmyk.jpg", gen.scene(5, 32)))
    paths.append(gen.truncated(root / "test" / "broken.jpg", gen.photo(1, 64)))
    paths += gen.junk_files(root / "test")
    paths.append(gen.save(root / "test" / "pixel.png", np.zeros((1, 1, 3), np.uint8)))
    paths.append(gen.save(root / "test" / "copy.jpg", gen.scene(0, 40), quality=90))  # same bytes as cat/0.jpg
    return root, paths


def test_one_row_per_path_in_order_with_reasons(folder):
    root, paths = folder
    df = scan_images(paths, root, progress=False, workers=2)
    assert list(df.columns) == COLUMNS and len(df) == len(paths)
    assert df["image"].tolist() == [p.relative_to(root).as_posix() for p in paths]
    assert df["image"].iloc[4] == "train/dög/Ünï.PNG"
    ok = dict(zip(df["image"], df["ok"]))
    assert all(ok[f"train/cat/{i}.jpg"] for i in range(4)) and ok["train/dög/cmyk.jpg"]
    bad = df[~df["ok"]]
    assert set(bad["image"]) == {"test/broken.jpg", "test/.DS_Store", "test/Thumbs.db", "test/notes.txt",
                                 "test/empty.jpg", "test/text_named.png", "test/pixel.png"}
    assert (bad["why"].str.len() > 0).all() and (bad["phash"] == "").all()
    good = df[df["ok"]]
    assert (good["why"] == "").all() and good["phash"].str.fullmatch("[0-9a-f]{16}").all()
    assert good["md5"].str.fullmatch("[0-9a-f]{32}").all()
    row = df.set_index("image").loc["train/cat/0.jpg"]
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("JPEG", "RGB", 40, 40)
    assert row["bytes"] == paths[0].stat().st_size
    assert row["md5"] == df.set_index("image").loc["test/copy.jpg", "md5"]
    assert df.set_index("image").loc["train/dög/cmyk.jpg", "mode"] == "CMYK"


def test_cache_reuses_rows_and_rereads_only_changed_files(folder, tmp_path, monkeypatch):
    root, paths = folder
    cache_csv = tmp_path / "folds" / "scan.csv"
    first = scan_images(paths, root, cache_csv=cache_csv, progress=False)
    assert cache_csv.exists()
    stamp = cache_csv.stat().st_mtime_ns

    calls = []
    real = scan.scan_one
    monkeypatch.setattr(scan, "scan_one", lambda p, name, *rest: calls.append(name) or real(p, name, *rest))
    again = scan_images(paths, root, cache_csv=cache_csv, progress=False)
    assert calls == []  # nothing re-read
    pd.testing.assert_frame_equal(again, first)
    assert cache_csv.stat().st_mtime_ns == stamp  # a no-op rerun does not rewrite the cache

    gen.save(paths[1], gen.scene(77, 48), quality=90)  # changed content and size
    os.utime(paths[2], ns=(1, 1))                      # same bytes, new mtime
    new = gen.save(root / "train" / "cat" / "new.jpg", gen.scene(50, 40))
    third = scan_images(paths + [new], root, cache_csv=cache_csv, progress=False)
    assert sorted(calls) == sorted(["train/cat/1.jpg", "train/cat/2.jpg", "train/cat/new.jpg"])
    assert third["width"].iloc[1] == 48 and third["phash"].iloc[1] != first["phash"].iloc[1]
    assert third["phash"].iloc[2] == first["phash"].iloc[2]
    cached = pd.read_csv(cache_csv, dtype=str, keep_default_na=False)
    assert len(cached) == len(paths) + 1 and "mtime_ns" in cached.columns


def test_corrupt_cache_is_ignored_with_a_warning(folder, tmp_path):
    root, paths = folder
    cache_csv = tmp_path / "scan.csv"
    cache_csv.write_text("garbage,columns\n1,2\n")
    with pytest.warns(UserWarning, match="rescanning"):
        df = scan_images(paths[:3], root, cache_csv=cache_csv, progress=False)
    assert df["ok"].all()
    assert "md5" in pd.read_csv(cache_csv).columns


def test_phash_hex_that_looks_numeric_survives_the_cache(tmp_path):
    root = tmp_path
    p = gen.save(root / "blank.png", np.zeros((16, 16, 3), np.uint8))  # phash of a blank image is all zeros
    cache_csv = tmp_path / "scan.csv"
    first = scan_images([p], root, cache_csv=cache_csv, progress=False)
    assert first["phash"].iloc[0] == "0" * 16
    assert scan_images([p], root, cache_csv=cache_csv, progress=False)["phash"].iloc[0] == "0" * 16


def test_missing_file_and_path_outside_root(tmp_path):
    df = scan_images([tmp_path / "gone.jpg"], tmp_path, progress=False)
    assert not df["ok"].iloc[0] and "cannot read" in df["why"].iloc[0]
    with pytest.raises(ValueError, match="not inside the scan root"):
        scan_images([tmp_path / "a.png"], tmp_path / "elsewhere", progress=False)


def test_summary_lists_unreadable_files(folder):
    root, paths = folder
    text = scan_summary(scan_images(paths, root, progress=False))
    assert f"scanned {len(paths)} files: 7 ok, 7 unreadable" in text.splitlines()[0]
    assert "byte-identical files: 2" in text
    assert "test/broken.jpg: cannot decode" in text and "test/pixel.png" in text and "JPEG" in text
