"""Nearest neighbours in an embedding space: who looks like whom, in blocks, without an N x N matrix.

Features are L2-normalised rows (a frozen backbone's, `members.features`), so a dot product is a cosine
similarity. Three questions are asked of them: each image's closest other images (the graph semantic
groups are built on), each test image's similarity to its nearest train image, and each OOF image's
similarity to its nearest image *in the other folds*, the training set of the model that predicts it.
The last two side by side say whether CV sees the test's situation (see `shift`).
"""
from __future__ import annotations

import numpy as np

# Rows per block: a block of 1024 x 25k similarities is 100 MB of float32.
CHUNK = 1024


def _blocks(n: int, chunk: int = CHUNK):
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


def top_neighbours(feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(index (N, k), similarity (N, k)): each row's k most similar other rows, most similar first."""
    feats = np.asarray(feats, np.float32)
    n = len(feats)
    k = max(0, min(k, n - 1))
    index, sims = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k == 0:
        return index, sims
    for start, stop in _blocks(n):
        s = feats[start:stop] @ feats.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        index[start:stop] = np.take_along_axis(part, order, 1)
        sims[start:stop] = np.take_along_axis(s, index[start:stop], 1)
    return index, sims


def nearest_similarity(query: np.ndarray, base: np.ndarray) -> np.ndarray:
    """(M,) each query row's similarity to its most similar base row (-1 when `base` is empty)."""
    query, base = np.asarray(query, np.float32), np.asarray(base, np.float32)
    out = np.full(len(query), -1.0, np.float32)
    if len(base) == 0:
        return out
    for start, stop in _blocks(len(query)):
        out[start:stop] = (query[start:stop] @ base.T).max(axis=1)
    return out


def other_fold_similarity(feats: np.ndarray, fold: np.ndarray,
                          top: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N,) each row's similarity to its most similar row in another fold (-1 when there is none).

    With `top` (from `top_neighbours`), the answer is the first listed neighbour in another fold; only
    rows whose whole list shares their fold (members of a large group) are compared with every row.
    """
    feats, fold = np.asarray(feats, np.float32), np.asarray(fold)
    n = len(feats)
    out = np.full(n, -1.0, np.float32)
    todo = np.arange(n)
    if top is not None and top[0].shape[1]:
        index, sims = top
        other = fold[index] != fold[:, None]
        found = other.any(axis=1)
        first = other.argmax(axis=1)
        out[found] = sims[found, first[found]]
        todo = np.flatnonzero(~found)
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        s = feats[rows] @ feats.T
        s[fold[rows][:, None] == fold[None, :]] = -np.inf
        best = s.max(axis=1)
        out[rows] = np.where(np.isfinite(best), best, -1.0)
    return out
