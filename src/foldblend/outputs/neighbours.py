"""The training images most similar to an upload, found with frozen-backbone features when they exist.

This module extracts no features itself. A source of features appends a function to `FEATURE_SOURCES`
that returns a `FeatureIndex` for a project, or None when it has nothing for it; the built-in source is
the best embedding member's cached frozen-backbone features (`report_neighbours.embedding_feature_index`).
Without an embedding member the web app shows no similar-images panel rather than inventing features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .predict import decode_images


@dataclass(frozen=True)
class Neighbour:
    image: str         # training image, relative to input/
    label: str
    similarity: float  # cosine similarity of the two feature vectors


@dataclass
class FeatureIndex:
    """Features of the training images, and the function that makes the same features of new images."""

    name: str                                # what the features are, e.g. "efficientnet_lite0, 224 px"
    img_size: int                            # new images are decoded and resized to this, as the train images were
    embed: Callable[[np.ndarray], np.ndarray]  # uint8 (N, S, S, 3) -> (N, D)
    ids: np.ndarray                          # (M,) training images, relative to input/
    labels: np.ndarray                       # (M,) their class names
    features: np.ndarray                     # (M, D)
    _nn: object = field(default=None, repr=False)

    def search(self, paths: list[Path], k: int = 5) -> list[list[Neighbour]]:
        """The k nearest training images (cosine) of each readable file, [] for an unreadable one."""
        from sklearn.neighbors import NearestNeighbors

        if self._nn is None:
            self._nn = NearestNeighbors(metric="cosine").fit(np.asarray(self.features, dtype=np.float32))
        images, ok, _ = decode_images(list(paths), [self.img_size], progress=False)
        out: list[list[Neighbour]] = [[] for _ in paths]
        if not ok.any():
            return out
        query = np.asarray(self.embed(images[self.img_size][ok]), dtype=np.float32)
        distance, index = self._nn.kneighbors(query, n_neighbors=min(k, len(self.ids)))
        for row, i in enumerate(np.flatnonzero(ok)):
            out[i] = [Neighbour(str(self.ids[j]), str(self.labels[j]), round(1.0 - float(d), 6))
                      for d, j in zip(distance[row], index[row])]
        return out


FEATURE_SOURCES: list[Callable[[object], FeatureIndex | None]] = []


def find_feature_index(project) -> FeatureIndex | None:
    """The first registered source's features for `project`, or None when no source has any."""
    from .report_neighbours import embedding_feature_index  # the embedding member kind's features

    if embedding_feature_index not in FEATURE_SOURCES:
        FEATURE_SOURCES.append(embedding_feature_index)
    for source in FEATURE_SOURCES:
        index = source(project)
        if index is not None:
            return index
    return None
