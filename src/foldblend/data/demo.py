"""The built-in demo competition: scikit-learn's bundled 8x8 digits dressed up as a Kaggle download.

It exists so `run.sh` works on a fresh machine with no data and no internet: ~1800 images, mixed sizes
and intensities, a mildly imbalanced class distribution, the Simpsons layout (`train/<class>/`,
`testset/`, `sample_submission.csv`), plus held-back test labels, named by `test_labels` in its
`competition.yaml`, so the summary can print the true test score beside the CV.

The build is written into a temporary folder and moved in; `input/.demo_complete` is written last, so
an interrupted build is simply rebuilt on the next call. The demo's fold configs belong to the demo: they
ship in `demo_configs/` and are written into `folds/` when the demo is built and `folds/` holds none
(any other competition gets configs written for it by `foldblend init`).
"""
from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from foldblend.artifacts import write_csv, write_text
from foldblend.data.competition_config import CONFIG_NAME
from foldblend.safety import remove

COMPLETE_MARKER = ".demo_complete"
BUILDING_MARKER = ".demo_building"
TEST_LABELS = "demo_test_labels.csv"
DEMO_CONFIG = f"test_labels: {TEST_LABELS}\n"  # the demo's competition.yaml: everything else is detected
DEMO_ENTRIES = ("train", "testset", "sample_submission.csv", TEST_LABELS, CONFIG_NAME)
UNDERSAMPLED_FRACTION = 0.5  # some classes keep half their images, so the demo is imbalanced like real data
N_UNDERSAMPLED = 3


def is_empty_input(input_dir: str | Path) -> bool:
    """True when input_dir is missing or holds nothing but hidden files (.gitkeep, .DS_Store)."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        return True
    return all(p.name.startswith(".") for p in input_dir.iterdir())


def is_demo_complete(input_dir: str | Path) -> bool:
    return (Path(input_dir) / COMPLETE_MARKER).is_file()


def build_demo(input_dir: str | Path, seed: int = 0, test_fraction: float = 0.25) -> None:
    """Write the demo competition into input_dir; a no-op when the same demo is already complete.

    Refuses to touch an input folder holding anything but a (complete or half-built) demo, so a user's
    competition download is never overwritten.
    """
    input_dir = Path(input_dir)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    params = {"source": "sklearn.datasets.load_digits", "seed": int(seed), "test_fraction": float(test_fraction)}
    marker = input_dir / COMPLETE_MARKER
    if marker.is_file() and _read_json(marker) == params:
        if not (input_dir / CONFIG_NAME).exists():  # a demo built before competition.yaml named its labels
            write_text(input_dir / CONFIG_NAME, DEMO_CONFIG)
        return
    ours = marker.is_file() or (input_dir / BUILDING_MARKER).is_file()
    if not ours and not is_empty_input(input_dir):
        raise ValueError(f"{input_dir}/ already holds files; not writing the demo over them "
                         f"(empty the folder, or point foldblend at another project folder)")
    input_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in input_dir.parent.glob(f".{input_dir.name}.demo-*"):  # left by an interrupted build
        remove(stale, inside=input_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{input_dir.name}.demo-", dir=input_dir.parent))
    try:
        _write_demo(tmp, seed, test_fraction)
        input_dir.mkdir(exist_ok=True)
        write_text(input_dir / BUILDING_MARKER, "")
        remove(marker, inside=input_dir)
        for name in DEMO_ENTRIES:
            target = input_dir / name
            remove(target, inside=input_dir)
            os.replace(tmp / name, target)
        write_text(marker, json.dumps(params) + "\n")
        remove(input_dir / BUILDING_MARKER, inside=input_dir)
    finally:
        remove(tmp, inside=input_dir.parent)


def demo_configs() -> dict[str, str]:
    """{file name: text} of the demo's fold configs (shipped with the package)."""
    folder = resources.files(__package__) / "demo_configs"
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def write_demo_configs(folds_dir: str | Path) -> list[str]:
    """Write the demo's fold configs into folds_dir when it holds no fold config; the names written
    (none when a config is already there: a user's configs are never joined or replaced)."""
    folds_dir = Path(folds_dir)
    if any(folds_dir.glob("*.yaml")):
        return []
    configs = demo_configs()
    for name, text in configs.items():
        write_text(folds_dir / name, text)
    return list(configs)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_demo(out: Path, seed: int, test_fraction: float) -> None:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images, targets = digits.images, digits.target
    keep = np.ones(len(targets), dtype=bool)
    for cls in rng.choice(10, size=N_UNDERSAMPLED, replace=False):
        members = np.flatnonzero(targets == cls)
        drop = rng.choice(members, size=int(len(members) * (1 - UNDERSAMPLED_FRACTION)), replace=False)
        keep[drop] = False
    order = rng.permutation(np.flatnonzero(keep))
    n_test = int(round(len(order) * test_fraction))
    test_idx, train_idx = order[:n_test], np.sort(order[n_test:])

    for i in train_idx:
        folder = out / "train" / str(targets[i])
        folder.mkdir(parents=True, exist_ok=True)
        _render(images[i], rng).save(folder / f"digit_{i:04d}.png")
    (out / "testset").mkdir()
    ids = []
    for k, i in enumerate(test_idx, start=1):
        ids.append(f"img_{k:04d}.png")
        _render(images[i], rng).save(out / "testset" / ids[-1])
    placeholder = "0"  # the first class, like the constant guess a real sample submission holds
    write_csv(out / "sample_submission.csv", pd.DataFrame({"Id": ids, "Expected": placeholder}))
    write_csv(out / TEST_LABELS, pd.DataFrame({"Id": ids, "Expected": targets[test_idx].astype(str)}))
    write_text(out / CONFIG_NAME, DEMO_CONFIG)


def _render(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One 8x8 digit (values 0..16) as an RGB image of a random size, tint, contrast and background."""
    h = int(rng.integers(20, 49))
    w = h if rng.random() < 0.7 else int(rng.integers(20, 49))
    ink = rng.uniform(0.5, 1.0) * digit / 16.0
    background = rng.uniform(0, 60)
    tint = rng.uniform(0.6, 1.0, size=3)
    rgb = background + ink[..., None] * (255 - background) * tint
    rgb = rgb + rng.normal(0, 4, size=rgb.shape)
    small = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return small.resize((w, h), Image.BILINEAR)
