"""Inference: a network's logits for every image under every TTA view, and the device it runs on.

`infer` knows nothing of scores (scoring is `assemble.score_member`'s job); mixed precision is chosen
here once, for training and inference alike.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm.auto import tqdm

from foldblend.members.transforms import TTA_VIEWS, to_input


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
