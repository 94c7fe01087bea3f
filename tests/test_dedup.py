from __future__ import annotations

import json

import cv2
import imagegen as gen
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from foldblend.data import dedup
from foldblend.data.dedup import duplicate_groups, duplicate_report, keep_one_per_group
from foldblend.data.read import decode_rgb, load_rgb
from foldblend.scanning.inventory import scan_images


def _jpeg(img, q):
    return decode_rgb(gen.encode(img, "JPEG", quality=q))


def _variants(base: np.ndarray, rng, shift: bool = True) -> list[np.ndarray]:
    """Copies people upload: resized, re-encoded and (optionally) re-cropped by 1-2 px."""
    s = base.shape[0]
    out = [cv2.resize(base, (s * 3 // 4, s * 3 // 4), interpolation=cv2.INTER_AREA),
           cv2.resize(base, (s * 3 // 2, s * 5 // 4), interpolation=cv2.INTER_CUBIC),
           _jpeg(base, int(rng.integers(40, 80)))]
    if shift:
        out += [gen.shifted(base, int(rng.choice([-1, 1])), int(rng.choice([-1, 0, 1]))),
                gen.shifted(base, int(rng.choice([-2, 2])), int(rng.choice([-2, 1])))]
    return out


def _scan(tmp_path, images: list[np.ndarray]) -> pd.DataFrame:
    paths = [gen.save(tmp_path / f"{i:03d}.png", img) for i, img in enumerate(images)]
    return scan_images(paths, tmp_path, progress=False)


def _same_partition(truth, groups) -> bool:
    pairs = set(zip(truth, groups.tolist()))
    return len(pairs) == len(set(truth)) == len(set(groups.tolist()))


def _copies(n_bases: int, size: int, shift: bool, seed: int):
    rng = np.random.default_rng(seed)
    images, truth = [], []
    for b in range(n_bases):
        base = gen.natural(seed * 1000 + b, size)
        for img in [base] + _variants(base, rng, shift):
            images.append(img)
            truth.append(b)
    for b in range(n_bases, n_bases + 8):  # singletons: different images, incl. flat illustrations
        images.append(gen.natural(seed * 1000 + b, size) if b % 2 else gen.shapes(b, 96))
        truth.append(b)
    return images, truth


def test_resized_and_reencoded_copies_grouped_at_default_distance(tmp_path):
    images, truth = _copies(12, 128, shift=False, seed=1)
    groups = duplicate_groups(_scan(tmp_path, images))
    assert _same_partition(truth, groups)
    assert list(groups[:4]) == [0] * 4 and groups[4] == 1  # ids count up in row order


@pytest.mark.parametrize("size", [128, 256])
def test_shifted_copies_need_a_wider_distance_than_the_default(tmp_path, size):
    """pHash flips up to ~6 of 64 bits on a 1-px shift at 128 px and ~10 on 2 px, while distinct images sit
    >= 16 bits apart: grouping for leak-proof folds should pass max_distance=10 (imagededup's default)."""
    images, truth = _copies(10, size, shift=True, seed=2)
    df = _scan(tmp_path, images)
    assert _same_partition(truth, duplicate_groups(df, max_distance=10))
    assert len(set(duplicate_groups(df, max_distance=0).tolist())) > len(set(truth))  # exact hashes miss copies


def test_identical_bytes_group_even_when_phash_missing_and_not_ok_rows_stay_alone():
    df = pd.DataFrame({"image": list("abcde"), "ok": [True, True, False, False, True],
                       "md5": ["m1", "m1", "m2", "m2", "m3"],
                       "phash": ["ffffffffffffffff", "0000000000000000", "", "", "fffffffffffffff0"],
                       "width": [10, 20, 0, 0, 30], "height": [10, 20, 0, 0, 30]})
    groups = duplicate_groups(df, max_distance=4)
    assert groups[0] == groups[1] == groups[4]  # md5 link a-b, 4-bit pHash link a-e
    assert len({groups[2], groups[3], groups[0]}) == 3  # unreadable rows never join anything
    keep = keep_one_per_group(df, groups)
    assert keep.tolist() == [False, False, True, True, True]  # the largest of the group
    assert duplicate_groups(df, max_distance=3)[4] != groups[0]


def test_report_label_conflicts_and_test_leaks():
    df = pd.DataFrame({"image": ["tr/a", "tr/b", "tr/c", "tr/d", "te/x", "te/y"], "ok": True,
                       "md5": ["1", "1", "2", "2", "3", "4"],
                       "phash": ["0000000000000001", "0000000000000001", "ff00ff00ff00ff00", "ff00ff00ff00ff00",
                                 "0000000000000003", "0f0f0f0f0f0f0f0f"], "width": 8, "height": 8})
    labels = pd.Series(["cat", "dog", "cat", "cat", np.nan, np.nan], index=range(10, 16))  # index ignored
    test_mask = np.array([False] * 4 + [True] * 2)
    groups = duplicate_groups(df)
    rep = duplicate_report(df, groups, labels, test_mask)
    assert rep["n_groups"] == 2 and rep["n_images_in_groups"] == 5
    assert rep["label_conflicts"] == [[{"image": "tr/a", "label": "cat"}, {"image": "tr/b", "label": "dog"}]]
    assert rep["test_near_train"] == [{"test_image": "te/x", "train_image": "tr/a", "train_label": "cat"}]
    json.dumps(rep)  # the CLI writes it as JSON
    with pytest.raises(ValueError, match="one label per row"):
        duplicate_report(df, groups, labels[:3], test_mask)
    assert duplicate_report(df, groups)["label_conflicts"] == []


def test_25k_hashes_in_seconds_with_planted_pairs():
    rng = np.random.default_rng(1)
    n = 25_000
    hashes = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    hashes[n - 1] = hashes[7] ^ np.uint64(0b1011)  # 3 bits from row 7
    df = pd.DataFrame({"ok": True, "md5": [f"{i}" for i in range(n)], "phash": [f"{int(h):016x}" for h in hashes]})
    groups = duplicate_groups(df)
    assert groups[n - 1] == groups[7]
    assert len(np.unique(groups)) == n - 1  # random 64-bit hashes are never within 4 bits of each other


def test_near_duplicates_leak_across_folds_and_groups_fix_it(tmp_path):
    """Copies in different folds let 1-NN 'recognise' instead of classify: leaky CV >> grouped CV ~ chance."""
    rng = np.random.default_rng(2)
    images, base_label = [], []
    for b in range(30):
        base = gen.natural(500 + b, 128)
        label = int(rng.integers(0, 2))  # random per base image: there is nothing to learn
        for img in [base] + _variants(base, rng):
            images.append(img)
            base_label.append(label)
    df = _scan(tmp_path, images)
    groups = duplicate_groups(df, max_distance=10)
    assert len(set(groups.tolist())) == 30
    x = np.stack([cv2.resize(load_rgb(tmp_path / name), (16, 16), interpolation=cv2.INTER_AREA).ravel()
                  for name in df["image"]]).astype(np.float32)
    y = np.array(base_label)
    knn = KNeighborsClassifier(n_neighbors=1)
    leaky = cross_val_score(knn, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    honest = cross_val_score(knn, x, y, groups=groups, cv=StratifiedGroupKFold(5, shuffle=True, random_state=0)).mean()
    assert leaky > 0.9
    assert honest < 0.7
    assert leaky - honest > 0.3


@pytest.mark.parametrize("max_distance", [0, 2, 4, 9])
def test_bucketed_pairs_are_exactly_the_all_pairs(max_distance):
    """Multi-index hashing finds every pair all-pairs finds, and no other: clusters of hashes a few bits
    apart (some sharing most segments, so buckets hold many), plus random ones."""
    rng = np.random.default_rng(max_distance)
    centres = rng.integers(0, 2**63, 40, dtype=np.int64).astype(np.uint64)
    flips = np.zeros(3000, np.uint64)
    for _ in range(6):  # up to 6 random bits flipped per hash
        on = rng.random(3000) < 0.35
        flips[on] |= np.uint64(1) << rng.integers(0, 64, on.sum()).astype(np.uint64)
    hashes = np.unique(np.r_[centres[rng.integers(0, 40, 3000)] ^ flips,
                             rng.integers(0, 2**63, 1000, dtype=np.int64).astype(np.uint64)])
    expected = {tuple(p) for p in np.stack(dedup._all_pairs(hashes, max_distance), 1).tolist()}
    found = np.stack(dedup._bucketed_pairs(hashes, max_distance), 1).tolist()
    assert len(found) == len(set(map(tuple, found)))
    assert set(map(tuple, found)) == expected
    assert len(expected) > 100 or max_distance == 0


def test_large_sets_take_the_bucketed_path_with_the_same_groups(monkeypatch):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    hashes = np.r_[base, base[:100] ^ np.uint64(0b101), base[100:150] ^ np.uint64(1 << 40 | 1 << 3 | 1 << 20)]
    df = pd.DataFrame({"ok": True, "md5": [f"{i}" for i in range(len(hashes))],
                       "phash": [f"{int(h):016x}" for h in hashes]})
    exact = duplicate_groups(df)
    monkeypatch.setattr(dedup, "ALL_PAIRS_UP_TO", 10)
    assert np.array_equal(duplicate_groups(df), exact)
    assert len(np.unique(exact)) == 300
