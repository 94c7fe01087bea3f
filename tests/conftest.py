"""Shared fixtures: a tiny generated competition in the Simpsons layout and a shrunk fold config."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

COLOURS = [(220, 40, 40), (40, 180, 60), (50, 70, 220), (230, 200, 30), (160, 60, 200)]

TINY_CONFIG = """\
model: cnn_tiny
img_size: 16
epochs: 1
batch_size: 16
lr: 0.01
augment: light
tta: [identity, hflip]
"""


def class_image(c: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Learnable on purpose: a class-coloured disc at a class-specific place on a noisy background."""
    h, w = size
    img = rng.integers(90, 140, (h, w, 3), dtype=np.uint8)
    cx = int(w * (0.25 + 0.5 * (c % 2))) + int(rng.integers(-2, 3))
    cy = int(h * (0.25 + 0.5 * ((c // 2) % 2))) + int(rng.integers(-2, 3))
    cv2.circle(img, (cx, cy), max(3, min(h, w) // 5), COLOURS[c % len(COLOURS)], -1)
    return img


def make_competition(root: Path, n_classes: int = 3, per_class: int = 12, n_test: int = 9, seed: int = 0,
                     names: list[str] | None = None, test_dir: str = "testset") -> Path:
    """input/train/<class>/*.png, input/<test_dir>/*.png, input/sample_submission.csv (Id,Expected)."""
    rng = np.random.default_rng(seed)
    names = names or [f"class_{c}" for c in range(n_classes)]
    inp = root / "input"
    for c, name in enumerate(names):
        d = inp / "train" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)))
            Image.fromarray(class_image(c, rng, size)).save(d / f"{name}_{i:03d}.png")
    (inp / test_dir).mkdir(parents=True, exist_ok=True)
    ids, truth = [], []
    for j in range(n_test):
        c = j % len(names)
        ids.append(f"t{j:03d}.png")
        truth.append(names[c])
        Image.fromarray(class_image(c, rng, (28, 28))).save(inp / test_dir / ids[-1])
    lines = ["Id,Expected"] + [f"{i},{names[0]}" for i in ids]
    (inp / "sample_submission.csv").write_text("\n".join(lines) + "\n")
    (root / "folds").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """A project after scan, folds, train, blend and submit, built once: tests copy it, never change it."""
    from hostile import build_trained

    return build_trained(tmp_path_factory.mktemp("trained") / "proj")


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A project folder with a 3-class competition, 2 folds and a 1-epoch cnn_tiny fold config."""
    make_competition(tmp_path)
    (tmp_path / "input" / "competition.yaml").write_text("n_splits: 2\n")
    (tmp_path / "folds" / "tiny.yaml").write_text(TINY_CONFIG)
    return tmp_path
