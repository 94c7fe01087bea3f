"""Reading weights files into networks: torch or safetensors files loaded without unpickling objects,
matched to a module by name or by position (`load_weights_file`), and the packaged or hub weights a
backbone starts from (`load_pretrained`). What weights exist and are installed is `foldblend.pretrained`'s
(a leaf, torch-free, so validating a config does not load torch)."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
import torch.nn as nn

from foldblend.pretrained import CheckpointError, package_file, packaged, say_once


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
