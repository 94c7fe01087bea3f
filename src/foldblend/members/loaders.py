"""Datasets over the decode-once image cache, and the loaders a fold needs.

Images come from `cache.cached_images` as a uint8 array (N, S, S, 3); a dataset only picks rows,
augments them (albumentations) and returns uint8 tensors. A batch is fetched in one call
(`__getitems__`: one fancy-indexed read, no per-sample collate), so without augmentation the loader
costs next to nothing. Randomness is a function of the epoch's seed, so a resumed run draws exactly
what an uninterrupted one would have.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from foldblend.members.transforms import class_sample_weights, create_augment


class CachedImages(Dataset):
    """Rows `index` of a cached image array, optionally augmented (stronger for rare classes)."""

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: np.ndarray | None = None,
                 augment=None, rare_augment=None, rare_classes: set[int] | None = None):
        self.images = images
        self.index = np.asarray(index)
        self.labels = None if labels is None else np.asarray(labels)
        self.augment = augment
        self.rare_augment = rare_augment
        self.rare_classes = rare_classes or set()

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, seed: int) -> None:
        for t in (self.augment, self.rare_augment):
            if t is not None:
                t.set_random_seed(seed)

    def _pipeline(self, label: int):
        return self.rare_augment if (self.rare_augment is not None and label in self.rare_classes) else self.augment

    def __getitem__(self, i: int):
        images, labels = self.__getitems__([i])
        return images[0], int(labels[0])

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch: uint8 (B, S, S, 3) and labels (B,) (-1 without labels)."""
        items = np.asarray(items, dtype=np.int64)
        images = self.images[self.index[items]]  # one read; a writable copy of the (read-only) cache rows
        labels = np.full(len(items), -1, np.int64) if self.labels is None else self.labels[items].astype(np.int64)
        if self.augment is not None or self.rare_augment is not None:
            for j, label in enumerate(labels):
                t = self._pipeline(int(label))
                if t is not None:
                    images[j] = t(image=images[j])["image"]
        return torch.from_numpy(images), torch.from_numpy(labels)


def _batched(batch):
    """`__getitems__` already returns a collated batch."""
    return batch


def _worker_init(worker_id: int) -> None:
    # each worker reseeds its copies of the pipelines from torch's per-worker seed (itself from the epoch seed)
    info = torch.utils.data.get_worker_info()
    ds = info.dataset
    ds.set_epoch(int(info.seed % (2**31)))


def train_steps(n_images: int, batch_size: int) -> int:
    """Batches per epoch of `train_loader` (the last, partial batch is dropped when there are full ones)."""
    return n_images // batch_size if n_images > batch_size else 1


def train_loader(images, index, labels, cfg, n_classes: int, seed: int, pin_memory: bool = False) -> DataLoader:
    """The loader for one training epoch; its order and augmentations depend only on `seed`."""
    counts = np.bincount(labels, minlength=n_classes)
    rare = {c for c in range(n_classes) if 0 < counts[c] < cfg.rare_threshold}
    ds = CachedImages(images, index, labels,
                      augment=create_augment(cfg.augment, cfg.img_size, cfg.flip),
                      rare_augment=create_augment(cfg.rare_augment, cfg.img_size, cfg.flip) if rare else None,
                      rare_classes=rare)
    ds.set_epoch(seed)
    gen = torch.Generator().manual_seed(seed)
    sampler, shuffle = None, True
    if cfg.sampler != "none":
        w = class_sample_weights(labels, n_classes, cfg.sampler)[labels]
        sampler, shuffle = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(labels),
                                                 replacement=True, generator=gen), False
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=shuffle, sampler=sampler, generator=gen,
                      num_workers=cfg.num_workers, drop_last=len(index) > cfg.batch_size,
                      worker_init_fn=_worker_init if cfg.num_workers else None, collate_fn=_batched,
                      persistent_workers=False, pin_memory=pin_memory)


def eval_loader(images, index, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    return DataLoader(CachedImages(images, index), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory, collate_fn=_batched)
