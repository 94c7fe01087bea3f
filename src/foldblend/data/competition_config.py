"""`input/competition.yaml`: a typed config, read by the same machinery as the fold configs.

Every key is optional. The layout keys override what `data.find` detects (an empty string: detect it);
the others say how the folds are made and what the test set is. An unknown key, a value of the wrong
type or a value out of range is one line naming the key and the file, never silently ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from foldblend.config import ConfigError, build_config, load_yaml
from foldblend.data.classes import CLASS_ORDERS
from foldblend.data.read import resolves_inside
from foldblend.errors import FoldblendError

CONFIG_NAME = "competition.yaml"
SUBMISSION_FORMATS = ("label", "probs", "class_id", "positive_prob")
DEDUP_MODES = ("auto", "group", "semantic", "keep_one", "off")
OOD_MODES = ("report", "drop")
MAX_HOLDOUT = 0.5  # of the train images, held out of every fold
PATH_KEYS = ("train_dir", "train_csv", "id_column", "label_column", "image_column", "test_dir",
             "sample_submission", "group_column", "test_labels")


class CompetitionError(FoldblendError):
    """input/ does not hold a competition we can read; the message names the folder and the fix."""


@dataclass
class CompetitionConfig:
    # --- layout: paths inside input/ and column names ("" = detected)
    train_dir: str = ""                 # folder per class, or the image folder of a labels CSV
    train_csv: str = ""                 # labels CSV (image id/path, label, optional group)
    id_column: str = ""                 # the labels CSV's id column
    label_column: str = ""
    image_column: str = ""              # the column naming each image file (default: the id column)
    group_column: str = ""              # images of one group (patient, scene) share a fold
    test_dir: str = ""
    sample_submission: str = ""
    test_labels: str = ""               # true test labels (a CSV of id,label), when known: a finished competition
    # --- classes and the submission
    classes: Optional[list[str]] = None  # explicit class order (each found class once)
    class_order: str = ""               # lexical | natural ("" = numeric when every name is an integer, else lexical)
    submission_format: Optional[str] = None  # label | probs | class_id | positive_prob (None: detected)
    # --- folds
    n_splits: int = 5
    fold_seed: int = 42
    dedup: str = "auto"                 # auto | group | semantic | keep_one | off
    dedup_distance: int = 4             # pHash Hamming distance of near-duplicates
    ood: str = "report"                 # report | drop (out-of-domain train images)
    ood_threshold: Optional[float] = None  # None: chosen from the data
    holdout: float = 0.0                # fraction held out of every fold (0 = none)
    semantic_threshold: Optional[float] = None  # cosine similarity of semantic groups (None: matched to the test)
    embeddings: bool = True             # False: no embeddings, so no semantic groups nor train/test check


# key -> (what it must be, check), on typed values; the key's type is checked first, by `build_config`
_PATH = ("a string (a path or column name)", lambda v: v != "")
VALUE_CHECKS = {
    **{k: _PATH for k in PATH_KEYS},
    "class_order": (f"one of {', '.join(CLASS_ORDERS)}", lambda v: v in CLASS_ORDERS),
    "submission_format": (f"one of {', '.join(SUBMISSION_FORMATS)}", lambda v: v is None or v in SUBMISSION_FORMATS),
    "n_splits": ("an integer >= 2", lambda v: v >= 2),
    "fold_seed": ("an integer in [0, 2**32) (a random seed)", lambda v: 0 <= v < 2**32),
    "dedup": (f"one of {', '.join(DEDUP_MODES)}", lambda v: v in DEDUP_MODES),
    "dedup_distance": ("an integer >= 0", lambda v: v >= 0),
    "ood": (f"one of {', '.join(OOD_MODES)}", lambda v: v in OOD_MODES),
    "holdout": (f"a fraction in [0, {MAX_HOLDOUT}] (0 = no held-out test split; more would test on more images "
                f"than the folds train on)", lambda v: 0 <= v <= MAX_HOLDOUT),
    "semantic_threshold": ("a cosine similarity in (0, 1], or null (chosen from the data)",
                           lambda v: v is None or 0 < v <= 1),
}


def read_competition_config(input_dir: str | Path) -> tuple[CompetitionConfig, set[str]]:
    """(the config in input_dir/competition.yaml, the keys it sets); the defaults and {} without the file."""
    path = Path(input_dir) / CONFIG_NAME
    if not path.is_file():
        return CompetitionConfig(), set()
    if not resolves_inside(path, input_dir):  # everything is read from inside input/ (docs/data.md)
        raise CompetitionError(f"{path}: resolves to {path.resolve()}, outside {Path(input_dir).name}/ (a symbolic "
                               f"link); copy it into {Path(input_dir).name}/, or make {Path(input_dir).name}/ "
                               f"itself a link to the folder holding the whole competition")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except ConfigError as e:  # a key given twice
        raise CompetitionError(str(e)) from None
    except UnicodeDecodeError:
        raise CompetitionError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise CompetitionError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(raw, dict):
        raise CompetitionError(f"{path}: expected `key: value` lines, got a {type(raw).__name__}")
    raw = {str(k): v for k, v in raw.items()}
    if raw.get("dedup") is False:  # YAML 1.1 reads a bare `off` as false
        raw["dedup"] = "off"
    if isinstance(raw.get("classes"), list):  # class names may be written as integers: 0, 1, 2
        raw["classes"] = [str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in raw["classes"]]
    try:
        cfg = build_config(CompetitionConfig, raw, str(path))
    except ConfigError as e:
        raise CompetitionError(str(e)) from None
    for key in raw:
        what, ok = VALUE_CHECKS.get(key, ("", lambda v: True))
        if not ok(getattr(cfg, key)):
            raise CompetitionError(f"{path}: key '{key}' must be {what}, got {getattr(cfg, key)!r}")
    return cfg, set(raw)

