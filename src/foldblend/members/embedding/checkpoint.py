"""A fold's `head.npz`: the head's arrays plus a JSON `meta` naming the backbone, so it rebuilds alone.

`meta` holds what `best.pt` holds for a network (classes, image size, TTA views, normalisation) and the
frozen backbone's spec (timm name and `pretrained:` value, e.g. `package:...`); the file is read with
`allow_pickle=False`. `load_head_checkpoint` returns an `EmbeddingClassifier` (backbone -> L2 norm ->
head), a module from images to logits, so `predict` and `evaluate` treat it like any fold model.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from foldblend.artifacts import write_npz
from foldblend.errors import FoldblendError
from foldblend.members.embedding.heads import head_arrays, head_from_arrays
from foldblend.members.features import FeatureSpec, load_backbone
from foldblend.members.infer import infer
from foldblend.pretrained import CheckpointError

CHECKPOINT = "head.npz"
META_KEYS = ("model", "pretrained", "img_size", "classes", "mean", "std")  # what rebuilding and predicting read


class EmbeddingClassifier(nn.Module):
    """Frozen backbone, L2-normalised features, a fitted head: images in, logits out."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.normalize(self.backbone(x).float(), dim=1))


def save_head_checkpoint(path: Path, head: nn.Module, meta: dict) -> None:
    write_npz(path, meta=np.asarray(json.dumps(meta)), **head_arrays(head))


def load_head_checkpoint(path: str | Path, device="cpu", backbones: dict | None = None) -> tuple[nn.Module, dict]:
    """(EmbeddingClassifier in eval mode, meta). `backbones` shares one loaded backbone between folds.
    A file foldblend did not write (no `meta`, object arrays, another head) is a CheckpointError naming it."""
    fix = "name a head.npz written by `foldblend train` (or a folder of them)"
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files") or "meta" not in z.files:
                raise CheckpointError(f"{path}: not a foldblend embedding head (no 'meta' in it); {fix}")
            meta = json.loads(str(z["meta"]))
            missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
            if missing:
                raise CheckpointError(f"{path}: not a foldblend embedding head (its meta lacks {missing[0]!r}); "
                                      f"{fix}")
            head = head_from_arrays(z)
        spec = FeatureSpec(str(meta["model"]), meta["pretrained"], int(meta["img_size"]))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path}: not a foldblend embedding head ({reason}); {fix}") from None
    cache = backbones if backbones is not None else {}
    if spec not in cache:
        try:
            cache[spec] = load_backbone(spec)[0]
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            if isinstance(e, FoldblendError):  # its own message (e.g. pretrained weights not found)
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointError(f"{path}: its backbone {spec.model!r} cannot be built ({reason})") from None
    return EmbeddingClassifier(cache[spec], head).to(device).eval(), meta


def share_one_backbone(models: list[nn.Module]) -> bool:
    """Fold models of one embedding member: the same frozen backbone object under different heads."""
    return all(isinstance(m, EmbeddingClassifier) and m.backbone is models[0].backbone for m in models)


@torch.no_grad()
def logits_of_heads(models: list[EmbeddingClassifier], loader, views: list[str], device, mean, std, amp: str,
                    desc: str | None = None) -> np.ndarray:
    """(F, V, N, C): the shared backbone runs once per view, then every fold's head on its features
    (what each EmbeddingClassifier would give alone, at 1/F of the backbone's cost)."""
    feats = infer(models[0].backbone, loader, views, device, mean, std, amp, desc=desc)  # (V, N, D)
    feats = nn.functional.normalize(torch.from_numpy(feats).to(device), dim=2)
    return np.stack([np.stack([m.head(f).float().cpu().numpy() for f in feats]) for m in models]).astype(np.float32)
