"""What `foldblend init` chooses from: the data (the scan and the split) and the machine (device, cores,
whether timm's hub can be reached).

The data profile counts only what the train stage will see: folds.csv's rows (unreadable and left-out
images are already gone), their sizes from the scan, the test images from the competition.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from foldblend.data.find import load_competition
from foldblend.data.split import HOLDOUT, read_folds
from foldblend.paths import Project

HUB_HOST = ("huggingface.co", 443)  # where timm's `pretrained: true` weights come from


@dataclass(frozen=True)
class DataProfile:
    n_train: int                  # cross-validated rows of folds.csv (fold 0..k-1)
    n_folds: int
    n_holdout: int                # fold -1 rows: predicted, never trained on
    n_test: int
    class_counts: dict            # class -> cross-validated images
    median_side: int              # median of sqrt(width x height) over those images: the side of a square
    #                               with the same number of pixels (every image is squashed to a square)
    train_paths: list = field(default_factory=list, repr=False)  # their files, for the probe

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def imbalance(self) -> float:
        """Largest class over smallest."""
        counts = list(self.class_counts.values())
        return max(counts) / max(min(counts), 1)

    @property
    def fold_train(self) -> int:
        """Images one fold model trains on."""
        return self.n_train - self.n_train // self.n_folds

    @property
    def fold_val(self) -> int:
        return self.n_train // self.n_folds

    def describe(self) -> str:
        return (f"{self.n_train:,} train images in {self.n_folds} folds, {self.n_classes} classes "
                f"(imbalance {self.imbalance:.1f}:1), median side {self.median_side} px, "
                f"{self.n_test:,} test" + (f", {self.n_holdout:,} held out" if self.n_holdout else ""))


@dataclass(frozen=True)
class Hardware:
    device: str                   # "cpu" or "cuda": where the configs will train
    name: str                     # for people: "2 CPU cores", "NVIDIA H100 (80 GB)"
    cpu_cores: int
    gpu_memory_gb: float = 0.0
    online: bool = False          # timm's hub reachable: hub weights (`pretrained: true`) can be downloaded
    here: bool = True             # the device is on this machine, so the probe can time it

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        return f"{self.name}, {'online (timm hub weights)' if self.online else 'offline (packaged weights)'}"


def data_profile(project: Project) -> DataProfile:
    """The profile of what `foldblend train` will train on; needs folds.csv and scan.csv."""
    folds = read_folds(project.folds_csv)  # a missing split is an error saying `foldblend folds`
    if not project.scan_csv.is_file():
        raise FileNotFoundError(f"{project.rel(project.scan_csv)} not found: run `foldblend scan` and "
                                f"`foldblend folds` first")
    comp = load_competition(project.input)
    scan = pd.read_csv(project.scan_csv, usecols=["image", "width", "height"], dtype={"image": str},
                       keep_default_na=False)
    trained = folds[folds["fold"] != HOLDOUT]
    sizes = trained[["image"]].merge(scan.drop_duplicates("image"), on="image", how="left")
    sides = np.sqrt(sizes["width"].to_numpy(float) * sizes["height"].to_numpy(float))
    sides = sides[np.isfinite(sides) & (sides > 0)]
    counts = trained["label"].value_counts()
    return DataProfile(n_train=len(trained), n_folds=int(trained["fold"].max()) + 1,
                       n_holdout=int((folds["fold"] == HOLDOUT).sum()), n_test=len(comp.test),
                       class_counts={c: int(counts.get(c, 0)) for c in comp.classes if counts.get(c, 0)},
                       median_side=int(round(float(np.median(sides)))) if len(sides) else 64,
                       train_paths=[comp.root / p for p in trained["image"]])


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether timm's hub answers (HF_HUB_OFFLINE=1 says no without asking)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in ("", "0"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def detect_hardware(device: str = "auto", online: bool | None = None) -> Hardware:
    """This machine (`auto`), or a GPU/CPU you will train on elsewhere (`cuda`, `cpu`): then `here` says
    whether the probe can time it on this machine."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    cores = os.cpu_count() or 1
    has_cuda = torch.cuda.is_available()
    target = ("cuda" if has_cuda else "cpu") if device == "auto" else device
    online = hub_reachable() if online is None else online
    if target == "cuda" and has_cuda:
        props = torch.cuda.get_device_properties(0)
        gb = props.total_memory / 2**30
        return Hardware("cuda", f"{props.name} ({gb:.0f} GB), {cores} CPU cores", cores, gb, online)
    if target == "cuda":  # writing for a GPU elsewhere: assume a common 16 GB card
        return Hardware("cuda", "a GPU elsewhere (assumed 16 GB; none here to time)", cores, 16.0, online, here=False)
    return Hardware("cpu", f"{cores} CPU core{'s' if cores > 1 else ''}, no GPU" if not has_cuda
                    else f"CPU ({cores} cores; the GPU here left out by --device cpu)", cores, 0.0, online)
