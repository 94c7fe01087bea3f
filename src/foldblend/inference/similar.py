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

from foldblend.artifacts import read_json
from foldblend.config import ConfigError, config_from_dict
from foldblend.data.find import load_competition
from foldblend.inference.predictor import decode_images
from foldblend.members.features import FeatureSpec, extract, features_of, load_backbone
from foldblend.paths import Project
from foldblend.running.experiment import load_train_data


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

    return embedding_feature_index(project)


def embedding_member(project: Project) -> tuple[str, dict] | None:
    """(name, resolved config) of the best finished embedding member in oof/, if any."""
    best = None
    for path in sorted(project.oof.glob("*/scores.json")):
        if path.parent.name.startswith("_"):
            continue
        scores = read_json(path)
        if scores is None:
            continue
        config = scores.get("config") or {}
        score = (scores.get("overall") or {}).get("macro_f1", -1.0)
        if config.get("kind") == "embedding" and (best is None or score > best[2]):
            best = (path.parent.name, config, score)
    return best[:2] if best else None


def _member_features(project: Project, name: str, config: dict):
    """(cfg, competition, train data, spec, train features) of embedding member `name`, from the feature cache."""

    cfg = config_from_dict(config, f"oof/{name}/scores.json")
    comp = load_competition(project.input)
    data = load_train_data(cfg, project, comp, progress=False)
    spec = FeatureSpec(cfg.model, cfg.pretrained, cfg.img_size)
    train = features_of(data.images, spec, ["identity"], project.feature_cache_dir, device=cfg.device,
                        batch_size=cfg.batch_size, amp=cfg.amp, progress=False)["identity"]
    return cfg, comp, data, spec, train


def embedding_feature_index(project: Project):
    """The web app's feature source: the best embedding member's training features and its backbone."""

    found = embedding_member(project)
    if found is None:
        return None
    name, config = found
    try:
        cfg, _, data, spec, train = _member_features(project, name, config)
    except (ConfigError, OSError, ValueError, RuntimeError):
        return None
    backbone, mean, std = load_backbone(spec)

    def embed(images: np.ndarray) -> np.ndarray:
        return extract(backbone, images, ["identity"], mean, std, "cpu", cfg.batch_size, cfg.amp)[0]

    return FeatureIndex(name=f"{name}: {cfg.model}, {cfg.img_size} px", img_size=cfg.img_size, embed=embed,
                        ids=np.asarray(data.ids), labels=np.asarray([data.classes[i] for i in data.labels]),
                        features=train)


def nearest(test_feats: np.ndarray, train_feats: np.ndarray, k: int,
            chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (M, k): every test row's k most similar train rows, most similar first."""
    sims_out, idx_out = [], []
    for start in range(0, len(test_feats), chunk):
        sims = np.asarray(test_feats[start:start + chunk], np.float32) @ np.asarray(train_feats, np.float32).T
        idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        sims_out.append(np.take_along_axis(sims, idx, axis=1))
        idx_out.append(idx)
    return np.concatenate(sims_out), np.concatenate(idx_out)
