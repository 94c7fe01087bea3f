"""The training images most similar to an upload, found with frozen-backbone features when they exist.

This module extracts no features itself: `find_feature_index` returns the best embedding member's
cached frozen-backbone features (`report_neighbours.embedding_feature_index`), L2-normalised, with the
function that makes the same features of new images. Without an embedding member the web app shows no
similar-images panel rather than inventing features.
"""
from __future__ import annotations

from dataclasses import dataclass
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
    features: np.ndarray                     # (M, D); similarity is their cosine

    def search(self, paths: list[Path], k: int = 5) -> list[list[Neighbour]]:
        """The k nearest training images (cosine) of each readable file, [] for an unreadable one."""
        from .report_neighbours import nearest

        images, ok, _ = decode_images(list(paths), [self.img_size], progress=False)
        out: list[list[Neighbour]] = [[] for _ in paths]
        if not ok.any():
            return out
        query = _unit(self.embed(images[self.img_size][ok]))
        similarity, index = nearest(query, _unit(self.features), min(k, len(self.ids)))
        for row, i in enumerate(np.flatnonzero(ok)):
            out[i] = [Neighbour(str(self.ids[j]), str(self.labels[j]), round(float(s), 6))
                      for s, j in zip(similarity[row], index[row])]
        return out


def _unit(rows) -> np.ndarray:
    """Rows scaled to length 1 (already so for backbone features), so a dot product is their cosine."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def find_feature_index(project) -> FeatureIndex | None:
    """The best embedding member's features for `project`, or None when it has none."""
    from .report_neighbours import embedding_feature_index

    return embedding_feature_index(project)
