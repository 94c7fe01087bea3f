"""Semantic groups: images that show the same thing without being pixel copies of it.

pHash finds a picture resized or re-encoded; it does not find the same object drawn by another artist,
the same patient in another scan or the same product from another angle. Those are near neighbours in a
frozen backbone's embedding space. Joining every pair above a similarity threshold (single linkage)
chains: A looks like B, B like C, ..., and one component swallows the data set. Average linkage does
not: two groups join only when their images are similar *on average*.

For L2-normalised features the average cosine similarity of two groups is the dot product of their
mean vectors, so exact average linkage needs no N x N matrix: `average_linkage` runs the
nearest-neighbour-chain algorithm on group means (memory N x D; scipy's `linkage` needs the N^2/2
distances, 2.5 GB at 25k images, and scikit-learn's sparse-graph variant averages only the graph's
edges, which chained on the benchmark). The tree is built once and cut at any threshold in
milliseconds, which is what the threshold search needs.

Each chain step compares one group mean with all of them, so the exact tree costs N^2 x D: a minute
at 16k images, an hour at 100k. From `GRAPH_FROM` images the nearest open group is searched in an
HNSW graph of the group means instead (faiss, as in `neighbours`; merged groups' old means stay in
the graph marked stale, and the graph is rebuilt when they outnumber the live ones), about N log N.
The merges are then those of reciprocal nearest neighbours *as the graph finds them*: an
approximation of average linkage that the search (a few candidates, exact similarities among them)
makes close, not exact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foldblend.data.dedup import first_seen_codes, linked_groups
from foldblend.data.neighbours import HNSW_BUILD_SEARCH, HNSW_LINKS, HNSW_SEARCH

# Above this many dimensions and images, the tree is built on a truncated SVD of the features: a chain
# step is a product of every group mean with one, so its cost is images x dimensions.
SVD_DIMENSIONS = 256
SVD_FROM_IMAGES = 4000
PROGRESS_FROM = 2000  # images from which building the tree shows a progress bar
# Images from which the nearest group is searched in a graph (`_GraphChain`): the exact chain takes
# two minutes at 8k images on 2 CPU cores, the graph's a fifth of that
GRAPH_FROM = 5000
GRAPH_CANDIDATES = (16, 64, 256)  # graph entries asked for per step, more when all are stale


@dataclass
class GroupTree:
    """An average-linkage merge tree over N images: `children[m]` joined at similarity `similarity[m]`."""

    n: int
    children: np.ndarray      # (M, 2) node ids; leaves are 0..N-1, merge m makes node N + m
    similarity: np.ndarray    # (M,) average cosine similarity of the two groups merge m joined

    def __post_init__(self):
        # a merge counts at the lowest similarity in its subtree, so a cut never takes a node without
        # everything under it (average linkage is monotone, so this only guards against float ties)
        self.levels = np.empty(len(self.children))
        self.leaders = np.empty((len(self.children), 2), np.int64)  # a leaf on each side of each merge
        leader = np.empty(len(self.children), np.int64)
        for m, (a, b) in enumerate(self.children):
            lo = self.similarity[m]
            for child in (a, b):
                if child >= self.n:
                    lo = min(lo, self.levels[child - self.n])
            self.levels[m] = lo
            self.leaders[m] = [a if a < self.n else leader[a - self.n], b if b < self.n else leader[b - self.n]]
            leader[m] = self.leaders[m, 0]

    def cut(self, threshold: float) -> np.ndarray:
        """Group ids (0..G-1, in order of first appearance) joining every subtree whose merges, its own
        and all below it, happened at similarity >= threshold."""
        joined = self.leaders[self.levels >= threshold]
        return linked_groups(self.n, joined[:, 0], joined[:, 1])


def average_linkage(feats: np.ndarray, floor: float = 0.0, progress: bool = True) -> GroupTree:
    """Exact average linkage (cosine) of L2-normalised rows, by nearest-neighbour chains on group means.

    Merges below `floor` are not made (a group whose best partner is below it is final: average linkage
    never brings a later partner closer), so the tree holds every merge a cut at >= floor can use.
    """
    from tqdm.auto import tqdm

    means = np.array(feats, np.float32)
    n = len(means)
    bar = tqdm(total=max(n - 1, 0), desc="semantic groups: merge similar images", unit="merge",
               disable=not progress or n < PROGRESS_FROM)
    sizes = np.ones(n, np.float32)
    node = np.arange(n)                      # the tree node each slot holds now
    open_ = np.ones(n, bool)                 # slots still able to merge
    graph = _GraphChain(means, open_) if n >= GRAPH_FROM else None
    children, similarity, chain = [], [], []
    first_open, n_open = 0, n                # open_ only ever turns False: the first open slot only moves on
    while True:
        if not chain:
            if n_open < 2:
                break
            while not open_[first_open]:
                first_open += 1
            chain.append(first_open)
        c = chain[-1]
        if graph is None:
            sims = means @ means[c]
            sims[~open_] = -np.inf
            sims[c] = -np.inf
            j = int(np.argmax(sims))
            best, previous = sims[j], sims[chain[-2]] if len(chain) > 1 else -np.inf
        else:
            j, best = graph.nearest(c)
            previous = float(means[chain[-2]] @ means[c]) if len(chain) > 1 else -np.inf
        if len(chain) > 1 and previous >= best:  # ties go to the chain: it always terminates
            j, best = chain[-2], previous
        if best < floor:
            open_[c] = False                 # nothing will ever be close enough to it
            n_open -= 1
            if graph is not None:
                graph.closed(1)
            chain.pop()
            continue
        if len(chain) > 1 and j == chain[-2]:  # reciprocal nearest neighbours: merge them
            chain.pop()
            chain.pop()
            children.append((node[c], node[j]))
            similarity.append(float(best))
            total = sizes[c] + sizes[j]
            means[j] = (sizes[c] * means[c] + sizes[j] * means[j]) / total
            sizes[j], node[j], open_[c] = total, n + len(children) - 1, False
            n_open -= 1
            if graph is not None:
                graph.merged(j)
            bar.update()
        else:
            chain.append(j)
    bar.close()
    return GroupTree(n, np.array(children, np.int64).reshape(-1, 2), np.array(similarity, np.float64))


class _GraphChain:
    """The nearest open group of a slot, searched in an HNSW graph of the group means (see the module
    docstring). Entry e of the graph holds slot `slot[e]`'s mean as it was when added; it is live while
    that slot is open and `entry[slot]` is still e."""

    def __init__(self, means: np.ndarray, open_: np.ndarray):
        self.means, self.open = means, open_
        self.entry = np.full(len(means), -1, np.int64)
        self._build()

    def _build(self) -> None:
        import faiss

        slots = np.flatnonzero(self.open)
        self.index = faiss.IndexHNSWFlat(self.means.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_BUILD_SEARCH
        self.index.add(np.ascontiguousarray(self.means[slots]))
        self.slot = list(slots)
        self.entry[slots] = np.arange(len(slots))
        self.live, self.stale = len(slots), 0

    def closed(self, count: int) -> None:
        self.live -= count
        self.stale += count
        if self.stale > self.live > 1:  # stale entries crowd the answers out: rebuild from the live ones
            self._build()

    def merged(self, slot: int) -> None:
        """Slot `slot` now holds the merged mean (the other merged slot is closed)."""
        self.entry[slot] = len(self.slot)
        self.slot.append(slot)
        self.index.add(self.means[slot:slot + 1])
        self.stale += 1   # the slot's old entry
        self.closed(1)    # the closed slot's entry

    def nearest(self, c: int) -> tuple[int, float]:
        """(slot, similarity) of the open slot most similar to c's mean, among the graph's candidates
        (every open slot when the graph keeps answering with stale entries)."""
        query = self.means[c:c + 1]
        for k in GRAPH_CANDIDATES:
            self.index.hnsw.efSearch = max(HNSW_SEARCH, 2 * k)
            _, found = self.index.search(query, min(k, self.index.ntotal))
            found = found[0][found[0] >= 0]
            slots = np.array([self.slot[e] for e in found], np.int64)
            live = slots[(self.entry[slots] == found) & self.open[slots] & (slots != c)] if len(slots) else slots
            if len(live):
                break
        else:
            live = np.flatnonzero(self.open)
            live = live[live != c]
        if not len(live):
            return c, -np.inf
        sims = self.means[live] @ self.means[c]  # exact similarities of the current means
        best = int(np.argmax(sims))
        return int(live[best]), float(sims[best])


def group_tree(feats: np.ndarray, floor: float = 0.0, progress: bool = True) -> GroupTree:
    """The average-linkage tree of L2-normalised features (see `average_linkage`); large sets of
    high-dimensional features are first reduced to `SVD_DIMENSIONS` (truncated SVD)."""
    feats = np.asarray(feats, np.float32)
    if len(feats) >= SVD_FROM_IMAGES and feats.shape[1] > SVD_DIMENSIONS:
        from sklearn.decomposition import TruncatedSVD

        # not PCA: cosine similarity is about directions from the origin, which centring would move
        feats = TruncatedSVD(SVD_DIMENSIONS, random_state=0).fit_transform(feats).astype(np.float32)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return average_linkage(feats, floor, progress)


def union_groups(*partitions) -> np.ndarray:
    """The finest grouping coarser than every partition given (connected components of their links)."""
    partitions = [np.asarray(p) for p in partitions if p is not None]
    n = len(partitions[0])
    src, dst = [np.arange(n)], [np.arange(n)]
    for p in partitions:
        codes = first_seen_codes(p)
        _, first = np.unique(codes, return_index=True)
        src.append(np.arange(n))
        dst.append(first[codes])  # link every member to its group's first member
    return linked_groups(n, np.concatenate(src), np.concatenate(dst))


def groups_added(base: np.ndarray, combined: np.ndarray) -> dict:
    """What a coarser grouping adds to `base`: groups that join several base groups, images they hold."""
    base, combined = np.asarray(base), np.asarray(combined)
    pairs = np.unique(np.stack([combined, base], 1), axis=0)
    joined = np.bincount(pairs[:, 0], minlength=combined.max(initial=-1) + 1)
    multi = np.flatnonzero(joined > 1)
    sizes = np.bincount(combined)
    return {"n_groups": int(len(multi)), "n_images": int(sizes[multi].sum()) if len(multi) else 0,
            "largest": int(sizes.max(initial=0)), "groups": multi}
