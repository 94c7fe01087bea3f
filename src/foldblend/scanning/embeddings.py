"""Scan-time embeddings: one frozen-backbone feature vector per train and test image, cached.

The scan, the folds stage and the report all ask "what does this image look like" (semantic groups,
the shift check, the neighbour similarities of the test-matched CV). They share one extraction: the
best offline backbone the installation has (`members.features.default_spec`: the packaged
EfficientNet-Lite0 ImageNet weights) at `SIZE` pixels, cached on disk per (backbone, size, file set),
so only the first scan of a competition pays for it. An embedding member with the same model,
weights and img_size reads the very same cache files. `embeddings: false` in competition.yaml skips
all of it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foldblend.members.features import default_spec, image_features
from foldblend.paths import Project

# Pixels the backbone sees. EfficientNet-Lite0 at 128 px costs a third of 224 px and kept the concept
# structure of the generated benchmark (bench/cv_honesty.py); 25k images take minutes on a CPU, once.
SIZE = 128


def scan_spec():
    return default_spec(SIZE)


def features_of_files(project: Project, root: Path, images: list[str],
                      progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """((N, D) float32 L2-normalised features, ok (N,)) of image files named relative to `root`."""

    if not images:
        return np.zeros((0, 0), np.float32), np.zeros(0, bool)
    feats, ok = image_features([root / p for p in images], scan_spec(), ("identity",),
                               image_cache=project.cache_dir, feature_cache=project.feature_cache_dir, root=root,
                               progress=progress)
    return np.asarray(feats["identity"], np.float32), np.asarray(ok, bool)


def spec_key() -> str:
    """What the features are (backbone, weights and their version, size): part of the shift check's key."""
    return scan_spec().key()
