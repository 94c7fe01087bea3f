"""Nearest neighbours in an embedding space: who looks like whom, in blocks, without an N x N matrix.

Features are L2-normalised rows (a frozen backbone's, `members.features`), so a dot product is a cosine
similarity. Three questions are asked of them: each image's closest other images (the graph semantic
groups are built on), each test image's similarity to its nearest train image, and each OOF image's
similarity to its nearest image *in the other folds*, the training set of the model that predicts it.
The last two side by side say whether CV sees the test's situation (see `shift`).

Up to `EXACT_UP_TO` rows every similarity is computed (blocked products, N^2 x D): exact, and at 20k
rows a few seconds. Above it, the all-pairs product grows quadratically (an hour at 200k rows, days
at 1M), so the neighbours are searched in an HNSW graph (faiss `IndexHNSWFlat`, inner product on the
full features): about N log N to build and to search, memory the features' own size again. faiss, not
scikit-learn: its trees (BallTree, KDTree) do no better than brute force on 1280 dimensions, and
pynndescent compiles with numba on first use, which each CLI process would pay. HNSW is approximate
in *which* neighbours it returns (docs/scale.md has its recall on backbone features), never in their
similarities: each returned similarity is the exact dot product.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

# Rows per block: a block of 1024 x 25k similarities is 100 MB of float32; against a larger base, fewer
# rows (`_rows_per_block`), so a block stays at BLOCK_VALUES similarities however large the data
CHUNK = 1024
BLOCK_VALUES = 25_000_000
EXACT_UP_TO = 20_000          # rows (of the base searched) up to which all similarities are computed
HNSW_LINKS = 32               # graph degree (faiss M): recall and memory both grow with it
HNSW_BUILD_SEARCH = 64        # candidates kept while inserting (efConstruction)
HNSW_SEARCH = 64              # candidates kept while searching (efSearch), at least 2 x k
LOOKUP = 32                   # neighbours listed first when none are given (as the shift check lists)
DEEPER = (128, 512, 2048)     # list lengths searched for rows whose first lists share their fold
PROGRESS_FROM = 20_000        # rows from which building and searching the graph show a progress bar
_INDEX: list = []             # [(base array, index)]: the last graph built, reused for the same array


def _use_graph(n_base: int, n_query: int) -> bool:
    return n_base > EXACT_UP_TO and n_query * n_base > EXACT_UP_TO ** 2


def _graph(base: np.ndarray, progress: bool = False):
    """The HNSW graph of `base` (rows L2-normalised), built once per array object: the shift check asks
    several questions of the same train features. The cache holds the array itself, so an id is never
    reused for another."""
    import faiss

    if _INDEX and _INDEX[0][0] is base:
        return _INDEX[0][1]
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_BUILD_SEARCH
    step = 8 * CHUNK
    with tqdm(total=len(base), desc="neighbour graph: insert images", unit="img",
              disable=not progress or len(base) < PROGRESS_FROM) as bar:
        for start in range(0, len(base), step):
            index.add(np.ascontiguousarray(base[start:start + step]))
            bar.update(min(step, len(base) - start))
    _INDEX[:] = [(base, index)]
    return index


def _search(base: np.ndarray, query: np.ndarray, k: int, progress: bool = False,
            what: str = "nearest images") -> tuple[np.ndarray, np.ndarray]:
    """(index (M, k), similarity (M, k)) of each query row's k most similar base rows by the graph;
    index -1 and similarity -inf where fewer were found."""
    index = _graph(base, progress)
    index.hnsw.efSearch = max(HNSW_SEARCH, 2 * k)
    found, sims = np.empty((len(query), k), np.int64), np.empty((len(query), k), np.float32)
    step = 8 * CHUNK
    with tqdm(total=len(query), desc=f"neighbour graph: {what}", unit="img",
              disable=not progress or len(query) < PROGRESS_FROM) as bar:
        for start in range(0, len(query), step):
            d, i = index.search(np.ascontiguousarray(query[start:start + step]), k)
            found[start:start + step], sims[start:start + step] = i, d
            bar.update(len(i))
    sims[found < 0] = -np.inf
    return found, sims


def _rows_per_block(n_base: int) -> int:
    return max(16, min(CHUNK, BLOCK_VALUES // max(n_base, 1)))


def _blocks(n: int, chunk: int = CHUNK):
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


def top_neighbours(feats: np.ndarray, k: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(index (N, k), similarity (N, k)): each row's k most similar other rows, most similar first.

    Above `EXACT_UP_TO` rows, by the HNSW graph; a row for which it finds fewer than k others lists
    itself at similarity -inf in the missing places (never a neighbour in another fold)."""
    feats = np.asarray(feats, np.float32)
    n = len(feats)
    k = max(0, min(k, n - 1))
    index, sims = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k == 0:
        return index, sims
    if _use_graph(n, n):
        found, found_sims = _search(feats, feats, k + 1, progress, "each image's closest")
        rows = np.arange(n)[:, None]
        found_sims[found == rows] = -np.inf  # not its own neighbour (it may not come first: exact copies)
        order = np.argsort(-found_sims, axis=1, kind="stable")[:, :k]
        index, sims = np.take_along_axis(found, order, 1), np.take_along_axis(found_sims, order, 1)
        missing = ~np.isfinite(sims)
        index[missing] = np.broadcast_to(rows, index.shape)[missing]
        return index, sims
    for start, stop in _blocks(n, _rows_per_block(n)):
        s = feats[start:stop] @ feats.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        index[start:stop] = np.take_along_axis(part, order, 1)
        sims[start:stop] = np.take_along_axis(s, index[start:stop], 1)
    return index, sims


def nearest_similarity(query: np.ndarray, base: np.ndarray, progress: bool = False) -> np.ndarray:
    """(M,) each query row's similarity to its most similar base row (-1 when `base` is empty); above
    `EXACT_UP_TO` base rows, by the HNSW graph of `base`."""
    query, base = np.asarray(query, np.float32), np.asarray(base, np.float32)
    out = np.full(len(query), -1.0, np.float32)
    if len(base) == 0 or len(query) == 0:
        return out
    if _use_graph(len(base), len(query)):
        _, sims = _search(base, query, 1, progress, "nearest training image")
        return np.where(np.isfinite(sims[:, 0]), sims[:, 0], -1.0).astype(np.float32)
    for start, stop in _blocks(len(query), _rows_per_block(len(base))):
        out[start:stop] = (query[start:stop] @ base.T).max(axis=1)
    return out


def other_fold_similarity(feats: np.ndarray, fold: np.ndarray,
                          top: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N,) each row's similarity to its most similar row in another fold (-1 when there is none).

    With `top` (from `top_neighbours`), the answer is the first listed neighbour in another fold; only
    rows whose whole list shares their fold (members of a large group) are searched further: above
    `EXACT_UP_TO` rows in the HNSW graph with ever longer lists (`DEEPER`), and those still without an
    other-fold neighbour, and all of them below it, are compared with every row.
    """
    feats, fold = np.asarray(feats, np.float32), np.asarray(fold)
    n = len(feats)
    out = np.full(n, -1.0, np.float32)
    todo = np.arange(n)
    if top is None and _use_graph(n, n):
        top = top_neighbours(feats, LOOKUP)
    if top is not None and top[0].shape[1]:
        index, sims = top
        other = fold[index] != fold[:, None]
        found = other.any(axis=1)
        first = other.argmax(axis=1)
        out[found] = sims[found, first[found]]
        todo = np.flatnonzero(~found)
    if top is not None and _use_graph(n, len(todo)):
        for k in DEEPER:
            if not len(todo):
                break
            index, sims = _search(feats, feats[todo], min(k, n))
            other = (fold[np.maximum(index, 0)] != fold[todo][:, None]) & np.isfinite(sims)
            found = other.any(axis=1)
            first = other.argmax(axis=1)
            out[todo[found]] = sims[found, first[found]]  # the graph lists best first
            todo = todo[~found]
    chunk = _rows_per_block(n)
    for start in range(0, len(todo), chunk):
        rows = todo[start:start + chunk]
        s = feats[rows] @ feats.T
        s[fold[rows][:, None] == fold[None, :]] = -np.inf
        best = s.max(axis=1)
        out[rows] = np.where(np.isfinite(best), best, -1.0)
    return out
