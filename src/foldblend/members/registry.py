"""The member kinds by name: `kind:` in a fold config -> the `MemberKind` that trains and loads it.

A kind registers itself with the decorator, like timm's `register_model`:

    @register_kind("centroid")
    class CentroidKind(MemberKind):
        checkpoint = "centroids.npz"
        ...

The built-in kinds (`cnn`, `embedding`) are known by name and imported on first use, so a kind's
dependencies load only when it is used. A kind defined elsewhere (a plugin, a test) is registered
when its module is imported, before the fold configs naming it are read; registering also tells
`config.validate` the name and the kind's key rules (`config.KIND_CHECKS`).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from foldblend.config import KIND_CHECKS, ConfigError
from foldblend.members.base import MemberKind

KINDS: dict[str, MemberKind] = {}
BUILTIN = {"cnn": "foldblend.members.cnn.kind", "embedding": "foldblend.members.embedding.kind"}


def register_kind(name: str):
    """Class decorator: one instance of the class becomes kind `name` (a later registration replaces it)."""

    def register(cls: type[MemberKind]) -> type[MemberKind]:
        kind = cls()
        kind.name = name
        KINDS[name] = kind
        KIND_CHECKS[name] = kind.check_config
        return cls

    return register


def kind_names() -> list[str]:
    return sorted(set(BUILTIN) | set(KINDS))


def get_kind(name: str, where: str = "") -> MemberKind:
    """The kind registered as `name`; a ConfigError naming `where` (the file) for an unknown one."""
    if name not in KINDS and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in KINDS:
        raise ConfigError(f"{where or 'fold config'}: key 'kind' must be one of {kind_names()}, got {name!r}"
                          f" (a kind of your own must be registered with register_kind before it is used)")
    return KINDS[name]


def all_kinds() -> list[MemberKind]:
    """Every kind, the built-in ones first."""
    return [get_kind(name) for name in [*BUILTIN, *(n for n in KINDS if n not in BUILTIN)]]


def checkpoint_names() -> list[str]:
    """The fold checkpoint file names of every kind (models/<exp>/fold_<k>/<name>)."""
    return list(dict.fromkeys(kind.checkpoint for kind in all_kinds()))


def kind_of_file(path: Path) -> MemberKind | None:
    """The kind whose checkpoint `path` is: the first that claims it, else the first whose checkpoint has
    the same suffix; None if none."""
    kinds = all_kinds()
    return (next((k for k in kinds if k.claims(path)), None)
            or next((k for k in kinds if Path(k.checkpoint).suffix == path.suffix), None))
