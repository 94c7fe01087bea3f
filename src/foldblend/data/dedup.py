"""Near-duplicate groups: the same picture resized, re-encoded or re-cropped by a pixel or two.

Why it matters: if copies of one picture land in different folds, the model is scored on images it
trained on and CV is optimistic (tests/test_dedup.py shows 1-NN going from chance to ~100%). The group
ids returned here are the `groups` of StratifiedGroupKFold, so all copies share a fold.

Two images are linked when their file bytes are identical (md5) or their 64-bit perceptual hashes differ
in at most `max_distance` bits; groups are the connected components of those links. Note that every
blank (single-colour) image has the same pHash, so blank images form one group, which is what you want.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Rows per block of the all-pairs comparison: 512 x 25k uint64 = 100 MB at most.
CHUNK = 512
# Up to this many distinct hashes the all-pairs comparison (N^2/2 XORs, a second at 25k) is kept: it is
# exact and simple. Above it, `_bucketed_pairs` finds the very same pairs in about N x (candidates per
# bucket): seconds at 1M hashes, where all pairs would take hours.
ALL_PAIRS_UP_TO = 8000


def phash_to_uint64(hexes) -> np.ndarray:
    """imagehash hex strings (16 hex digits = 64 bits) to uint64."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def _all_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) with Hamming distance <= max_distance, in blocks \
(O(N^2/2) bit ops, no Python loop per pair)."""
    src, dst = [], []
    n = len(hashes)
    for start in range(0, n, CHUNK):
        block = hashes[start:start + CHUNK]
        rest = hashes[start:]  # only the upper triangle: j >= start
        dist = np.bitwise_count(block[:, None] ^ rest[None, :])
        i, j = np.nonzero(dist <= max_distance)
        keep = j + start > i + start  # drop self and lower-triangle pairs within the block
        src.append(i[keep] + start)
        dst.append(j[keep] + start)
    if not src:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(src), np.concatenate(dst)


def _segments(parts: int) -> list[tuple[int, int]]:
    """(shift, bits) of `parts` disjoint bit ranges covering the 64 bits (as even as possible)."""
    bounds = np.linspace(0, 64, parts + 1).round().astype(int)
    return [(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def _bucketed_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The same pairs as `_all_pairs`, by multi-index hashing (Norouzi et al., 2012).

    Cut the 64 bits into max_distance + 2 disjoint segments: two hashes at most max_distance bits apart
    differ in at most max_distance segments, so they agree exactly on at least two (pigeonhole). Each
    pair of segments is one key (about 21 bits at the default distance 4, 15 keys); each key sorts the
    hashes into buckets of equal key value, only pairs inside a bucket are candidates, and each
    candidate is then checked on all 64 bits. Nothing is approximate: every pair within the distance
    shares a bucket of some key. Work: a sort per key plus the candidates, about N^2 / 2^21 per key for
    random hashes (a few per hash up to millions of images; with one segment per key, 13 bits, it would
    be N^2 / 2^13: 150 s at 1M hashes); a bucket of many similar hashes costs its size squared, as
    all-pairs would inside it.
    """
    n = len(hashes)
    found = []
    segments = _segments(max_distance + 2)
    for x, (shift_a, bits_a) in enumerate(segments):
        for shift_b, bits_b in segments[x + 1:]:
            key = (((hashes >> np.uint64(shift_a)) & np.uint64((1 << bits_a) - 1)) << np.uint64(bits_b)) \
                | ((hashes >> np.uint64(shift_b)) & np.uint64((1 << bits_b) - 1))
            order = np.argsort(key, kind="stable")
            key = key[order]
            # each row against the rows d places after it in the sorted order, while any is in its bucket
            active = np.arange(n - 1)
            d = 1
            while len(active):
                active = active[key[active] == key[active + d]]
                if len(active):
                    i, j = order[active], order[active + d]
                    close = np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
                    found.append(np.stack([np.minimum(i[close], j[close]), np.maximum(i[close], j[close])], 1))
                d += 1
                active = active[active + d < n]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.concatenate(found).astype(np.int64), axis=0)  # a pair may share several keys
    return pairs[:, 0], pairs[:, 1]


def _near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) with Hamming distance <= max_distance (exact at every size)."""
    if len(hashes) <= ALL_PAIRS_UP_TO or max_distance > 12:  # then 91+ keys of 9 bits or fewer: no faster
        return _all_pairs(hashes, max_distance)
    return _bucketed_pairs(hashes, max_distance)


def duplicate_groups(df: pd.DataFrame, max_distance: int = 4) -> np.ndarray:
    """An integer group id per row of a scan table (needs `ok`, `md5`, `phash`); ids count up in row order.

    Not-ok rows are each their own group (an unreadable file's hash says nothing about its picture).
    """
    n = len(df)
    if n == 0:
        return np.empty(0, np.int64)
    ok = df["ok"].to_numpy(dtype=bool)
    idx = np.flatnonzero(ok)
    src, dst = [], []
    # Identical bytes: link each member to the first with the same md5.
    md5 = df["md5"].to_numpy()[idx]
    _, first, inverse = np.unique(md5, return_index=True, return_inverse=True)
    src.append(idx)
    dst.append(idx[first[inverse]])
    # Identical pHash the same way, then compare only the distinct hashes pairwise.
    if len(idx):
        hashes = phash_to_uint64(df["phash"].to_numpy()[idx])
        uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        src.append(idx)
        dst.append(idx[first[inverse]])
        a, b = _near_pairs(uniq, max_distance)
        src.append(idx[first[a]])
        dst.append(idx[first[b]])
    return linked_groups(n, np.concatenate(src), np.concatenate(dst))


def linked_groups(n: int, src, dst) -> np.ndarray:
    """Group ids of n items joined by the links src[i] -- dst[i] (connected components), numbered in
    order of first appearance so ids are stable and readable (0, 1, 2, ... down the table)."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    graph = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n))
    return first_seen_codes(connected_components(graph, directed=False)[1])


def first_seen_codes(values) -> np.ndarray:
    """Integer codes 0..G-1 numbered in order of first appearance (stable, readable group ids)."""
    _, first, inverse = np.unique(np.asarray(values), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)


def keep_one_per_group(df: pd.DataFrame, groups: np.ndarray) -> np.ndarray:
    """Boolean mask keeping one row per group: the largest readable image (ties: the first row).

    Unreadable rows are their own groups and stay True here; combine with `df.ok` to drop them.
    """
    groups = np.asarray(groups)
    area = (df["width"].to_numpy(np.int64) * df["height"].to_numpy(np.int64)) * df["ok"].to_numpy(bool)
    # Sort by group, then area descending, then row: the first row of each group is the keeper.
    order = np.lexsort((np.arange(len(groups)), -area, groups))
    keep = np.zeros(len(groups), bool)
    first = np.ones(len(order), bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keep[order[first]] = True
    return keep


def duplicate_report(df: pd.DataFrame, groups: np.ndarray, labels: pd.Series | None = None,
                     test_mask: np.ndarray | None = None) -> dict:
    """What the groups mean for the competition.

    `labels` is positional (one per row, NaN/None for test rows); `test_mask` marks test rows.
    Returns: n_groups (groups with > 1 member), n_images_in_groups, groups (lists of images),
    label_conflicts (train groups whose labels disagree: [[{image, label}, ...], ...]) and
    test_near_train ([{test_image, train_image, train_label}] - test images that copy a train image,
    whose labels you effectively know; also a warning that CV and leaderboard may diverge).
    """
    groups = np.asarray(groups)
    images = df["image"].to_numpy()
    n = len(df)
    test = np.zeros(n, bool) if test_mask is None else np.asarray(test_mask, bool)
    lab = None if labels is None else pd.Series(labels).reset_index(drop=True)
    if lab is not None and len(lab) != n:
        raise ValueError(f"labels has {len(lab)} entries for {n} scan rows; pass one label per row (NaN for test)")
    frame = pd.DataFrame({"row": np.arange(n), "group": groups})
    sizes = frame.groupby("group")["row"].transform("size").to_numpy()
    multi = frame[sizes > 1].groupby("group")["row"].apply(list)
    report = {"n_groups": int(len(multi)), "n_images_in_groups": int((sizes > 1).sum()),
              "groups": [[str(images[r]) for r in rows] for rows in multi], "label_conflicts": [],
              "test_near_train": []}
    for rows in multi:
        rows = np.asarray(rows)
        train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
        if lab is not None and len(train_rows) > 1:
            values = lab.iloc[train_rows]
            if values.dropna().astype(str).nunique() > 1:
                report["label_conflicts"].append(
                    [{"image": str(images[r]), "label": _plain(lab.iloc[r])} for r in train_rows])
        if len(train_rows) and len(test_rows):
            t = train_rows[0]
            for r in test_rows:
                report["test_near_train"].append({"test_image": str(images[r]), "train_image": str(images[t]),
                                                  "train_label": None if lab is None else _plain(lab.iloc[t])})
    return report


def _plain(v):
    """numpy scalars to Python ones, so the report is JSON-serialisable as is."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v
