"""Augmentation pipelines (albumentations, on cached uint8 images) and TTA views (tiny named functions).

Training images arrive already decoded and resized to img_size (see data/cache.py), so augmentation here
never resizes the whole file again. Normalisation happens on the batch tensor (on the device), not per
sample, which keeps the CPU data path cheap.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
import numpy as np
import torch

from foldblend.config import TTA_VIEW_NAMES

# ----------------------------------------------------------------------------- training augmentation


def create_augment(level: str, img_size: int, flip: bool = True, seed: int | None = None) -> A.Compose | None:
    """An albumentations pipeline by strength; None for 'none'. Output keeps the input's size."""
    if level == "none":
        return None
    flips = [A.HorizontalFlip(p=0.5)] if flip else []
    if level == "light":
        ops = flips + [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=0.5)]
    elif level == "medium":
        ops = flips + [
            A.Affine(scale=(0.85, 1.15), translate_percent=(-0.08, 0.08), rotate=(-15, 15), p=0.7),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.HueSaturationValue(10, 20, 10, p=0.3),
        ]
    elif level == "strong":
        hole = max(1, img_size // 6)
        ops = flips + [
            A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), rotate=(-25, 25), shear=(-8, 8), p=0.8),
            A.RandomBrightnessContrast(0.3, 0.3, p=0.7),
            A.HueSaturationValue(15, 30, 20, p=0.5),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(hole // 2 + 1, hole),
                            hole_width_range=(hole // 2 + 1, hole), p=0.5),
        ]
    else:
        raise ValueError(f"unknown augmentation level {level!r} (none, light, medium, strong)")
    return A.Compose(ops, seed=seed)


# ----------------------------------------------------------------------------- batch normalisation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_input(batch: torch.Tensor, mean, std, device, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on `device`.

    The uint8 batch travels to the device (4x fewer bytes than float); the layout is chosen here on
    purpose: a bare permute would hand the network channels-last strides even where `channels_last`
    is off, and the convolutions would silently run in the other memory format.
    """
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(torch.float32, memory_format=fmt)
    m = torch.tensor([255.0 * v for v in mean], device=x.device).view(1, 3, 1, 1)
    s = torch.tensor([1.0 / (255.0 * v) for v in std], device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).mul_(s)


# ----------------------------------------------------------------------------- TTA views
# Each view maps a normalised batch (B, 3, H, W) to another view of the same images.

def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2)


def rot180(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2).flip(3)


def rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, dims=(2, 3))


def rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 3, dims=(2, 3))


def zoom(x: torch.Tensor) -> torch.Tensor:
    """Centre crop of 87.5% resized back: a mild scale view."""
    h, w = x.shape[2:]
    dh, dw = h // 16, w // 16
    crop = x[:, :, dh:h - dh, dw:w - dw]
    return torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


def zoom_hflip(x: torch.Tensor) -> torch.Tensor:
    return hflip(zoom(x))


TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": identity, "hflip": hflip, "vflip": vflip, "rot90": rot90, "rot180": rot180,
    "rot270": rot270, "zoom": zoom, "zoom_hflip": zoom_hflip,
}
assert tuple(TTA_VIEWS) == TTA_VIEW_NAMES, "config.TTA_VIEW_NAMES names the views a config may use"


def class_sample_weights(labels: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    """Per-class weights for a sampler or a loss: balanced = 1/count, sqrt = 1/sqrt(count), mean 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1.0
    w = {"balanced": 1.0 / counts, "sqrt": 1.0 / np.sqrt(counts)}[mode]
    return w / (w * counts).sum() * counts.sum()
