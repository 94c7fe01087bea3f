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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foldblend.data.dedup import first_seen_codes, linked_groups

# Above this many dimensions and images, the tree is built on a truncated SVD of the features: a chain
# step is a product of every group mean with one, so its cost is images x dimensions.
SVD_DIMENSIONS = 256
SVD_FROM_IMAGES = 4000
PROGRESS_FROM = 2000  # images from which building the tree shows a progress bar


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


def average_linkage(feats: np.ndarray, floor: float = 0.0) -> GroupTree:
    """Exact average linkage (cosine) of L2-normalised rows, by nearest-neighbour chains on group means.

    Merges below `floor` are not made (a group whose best partner is below it is final: average linkage
    never brings a later partner closer), so the tree holds every merge a cut at >= floor can use.
    """
    from tqdm.auto import tqdm

    means = np.array(feats, np.float32)
    n = len(means)
    bar = tqdm(total=max(n - 1, 0), desc="semantic groups", unit="merge", disable=n < PROGRESS_FROM)
    sizes = np.ones(n, np.float32)
    node = np.arange(n)                      # the tree node each slot holds now
    open_ = np.ones(n, bool)                 # slots still able to merge
    children, similarity, chain = [], [], []
    while True:
        if not chain:
            rest = np.flatnonzero(open_)
            if len(rest) < 2:
                break
            chain.append(int(rest[0]))
        c = chain[-1]
        sims = means @ means[c]
        sims[~open_] = -np.inf
        sims[c] = -np.inf
        j = int(np.argmax(sims))
        if len(chain) > 1 and sims[chain[-2]] >= sims[j]:  # ties go to the chain: it always terminates
            j = chain[-2]
        if sims[j] < floor:
            open_[c] = False                 # nothing will ever be close enough to it
            chain.pop()
            continue
        if len(chain) > 1 and j == chain[-2]:  # reciprocal nearest neighbours: merge them
            chain.pop()
            chain.pop()
            children.append((node[c], node[j]))
            similarity.append(float(sims[j]))
            total = sizes[c] + sizes[j]
            means[j] = (sizes[c] * means[c] + sizes[j] * means[j]) / total
            sizes[j], node[j], open_[c] = total, n + len(children) - 1, False
            bar.update()
        else:
            chain.append(j)
    bar.close()
    return GroupTree(n, np.array(children, np.int64).reshape(-1, 2), np.array(similarity, np.float64))


def group_tree(feats: np.ndarray, floor: float = 0.0) -> GroupTree:
    """The average-linkage tree of L2-normalised features (see `average_linkage`); large sets of
    high-dimensional features are first reduced to `SVD_DIMENSIONS` (truncated SVD)."""
    feats = np.asarray(feats, np.float32)
    if len(feats) >= SVD_FROM_IMAGES and feats.shape[1] > SVD_DIMENSIONS:
        from sklearn.decomposition import TruncatedSVD

        # not PCA: cosine similarity is about directions from the origin, which centring would move
        feats = TruncatedSVD(SVD_DIMENSIONS, random_state=0).fit_transform(feats).astype(np.float32)
        feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return average_linkage(feats, floor)


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
