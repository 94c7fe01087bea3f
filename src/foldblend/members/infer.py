"""Inference: a network's logits for every image under every TTA view, and the device it runs on.

`infer` knows nothing of scores (scoring is `assemble.score_member`'s job); mixed precision is chosen
here once, for training and inference alike. `test_batchnorm` re-estimates a network's BatchNorm
statistics on the images it is about to predict (`test_stats`).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from foldblend.members.transforms import TTA_VIEWS, to_input

PRIOR_IMAGES = 50  # `test_stats`: the training statistics weigh as this many test images (BatchNorm, linear heads)


def shrunk(test_value, train_value, n_test: int, prior: int = PRIOR_IMAGES):
    """A statistic of `n_test` test images shrunk towards the training one, which weighs as `prior` more
    test images: the one rule of `test_stats` for BatchNorm layers and linear heads (arrays or tensors)."""
    w = n_test / (n_test + prior)
    return w * test_value + (1 - w) * train_value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but no CUDA device is available (set device: auto or cpu)")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """Mixed precision on CUDA (bf16 where supported, else fp16); plain fp32 on CPU unless asked."""
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_dtype(device: torch.device, amp: str):
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    # native bf16 only (Ampere+): T4/P100 report emulated bf16 as "supported", and it is slow there
    if amp == "bf16" or (device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8):
        return torch.bfloat16
    return torch.float16


@torch.no_grad()
def infer(model: torch.nn.Module, loader, views: list[str], device, mean, std, amp: str = "auto",
          channels_last: bool = False, desc: str | None = None, n_classes: int | None = None) -> np.ndarray:
    """Logits of every image under every view: float32 (V, N, C).

    N may be 0 (a train-only task has no test images): then the shape needs `n_classes`."""
    model.eval()
    device = torch.device(device)
    out: list[list[np.ndarray]] = [[] for _ in views]
    for batch, _ in tqdm(loader, desc=desc, leave=False, disable=desc is None):
        x = to_input(batch, mean, std, device, channels_last)
        with autocast(device, amp):
            for v, name in enumerate(views):
                out[v].append(model(TTA_VIEWS[name](x)).float().cpu().numpy())
    if not out[0]:
        if n_classes is None:
            raise ValueError("infer: no images and no n_classes to shape the empty result")
        return np.zeros((len(views), 0, n_classes), np.float32)
    return np.stack([np.concatenate(chunks) for chunks in out]).astype(np.float32)


@torch.no_grad()
def test_batchnorm(model: torch.nn.Module, loader, device, mean, std, amp: str = "auto", channels_last: bool = False,
                   prior: int = PRIOR_IMAGES, desc: str | None = None) -> dict[str, torch.Tensor] | None:
    """{buffer name: tensor}: every BatchNorm layer's running mean and variance re-estimated on the images of
    `loader` (identity view), shrunk towards the training ones as if those were `prior` more images; None
    for a network without BatchNorm or fewer than two images. `model` is left as it was.

    AdaBN (Li et al., 2016): a network trained on one image source reads another through statistics
    that no longer hold; the test's own, taken layer after layer in one pass (each layer normalised by
    its batch, as in training), put its features back where the later layers expect them."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    if not names:
        return None
    adapted = copy.deepcopy(model).eval()
    layers = dict(adapted.named_modules())
    for name in names:
        layers[name].reset_running_stats()
        layers[name].momentum = None  # a cumulative average over every batch
        layers[name].train()
    device = torch.device(device)
    seen = 0
    for batch, _ in tqdm(loader, desc=desc, leave=False, disable=desc is None):
        if len(batch) < 2:  # a batch statistic needs two images (the loader's last batch may hold one)
            continue
        with autocast(device, amp):
            adapted(to_input(batch, mean, std, device, channels_last))
        seen += len(batch)
    if seen < 2:
        return None
    trained = dict(model.named_modules())
    out = {}
    for name in names:
        for stat in ("running_mean", "running_var"):
            new, old = getattr(layers[name], stat).float(), getattr(trained[name], stat).float()
            out[f"{name}.{stat}"] = shrunk(new, old, seen, prior).to(getattr(trained[name], stat).dtype).cpu()
    return out


def apply_test_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy `test_batchnorm`'s statistics into `model`'s buffers (in place); KeyError on a name it lacks."""
    buffers = dict(model.named_buffers())
    for name, value in state.items():
        buffers[name].copy_(value.to(buffers[name].device))
    return model
