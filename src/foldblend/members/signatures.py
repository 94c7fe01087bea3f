"""When is a fold finished? Its done.json records what its weights and its predictions were made from.

A fold retrains when its signature (the config's weight-relevant keys, the split, the class order, the
train files' contents) changes, and only predicts again when its prediction signature (TTA views, amp,
test files) changes. The runner (`running.fold.run_fold`) writes done.json with both for every member
kind, so this logic is the same for all.
"""
from __future__ import annotations

import json
from pathlib import Path

from foldblend.artifacts import read_json, write_json
from foldblend.config import ExperimentConfig

SECONDS_FILE = "time.json"
DEFAULT_CHECKPOINT = "best.pt"  # a fold's weights file when done.json names none


def fold_signature(cfg: ExperimentConfig, data) -> dict:
    """What a fold's weights depend on: a change here retrains the fold."""
    return {"config": cfg.fingerprint(), "data": data.fingerprint}


def predict_signature(cfg: ExperimentConfig, data) -> dict:
    """What a fold's predictions depend on beyond its weights: a change here only predicts again."""
    return {"tta": list(cfg.tta), "amp": cfg.amp, "test": data.test_fingerprint, "test_stats": cfg.test_stats}


_SAID_UNREADABLE: set[str] = set()  # done.json files already reported unreadable, in this process


def read_done(out_dir: Path) -> dict:
    """The fold's done.json; {} (not done) when it is missing, or unreadable (said once: training rewrites it)."""
    done = Path(out_dir) / "done.json"
    if not done.exists():
        return {}
    try:
        record = json.loads(done.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError(f"a {type(record).__name__}, not a mapping")
        return record
    except (ValueError, OSError) as e:  # hand-edited or cut short: the fold is simply trained again
        if str(done) not in _SAID_UNREADABLE:
            _SAID_UNREADABLE.add(str(done))
            print(f"{done}: unreadable ({str(e).splitlines()[0]}); the fold counts as not done and is trained again")
        return {}


def is_trained(out_dir: Path, signature: dict) -> bool:
    """done.json has this signature and the fold's checkpoint (`best.pt`, or the file done.json names) exists."""
    done = read_done(out_dir)
    return done.get("signature") == signature and (Path(out_dir) / done.get("checkpoint", DEFAULT_CHECKPOINT)).exists()


def is_fold_done(out_dir: Path, signature: dict, predictions: dict | None = None) -> bool:
    """Trained with these weights' inputs and (when given) predicted with these predictions' inputs."""
    if not (is_trained(out_dir, signature) and (Path(out_dir) / "preds.npz").exists()):
        return False
    return predictions is None or read_done(out_dir).get("predictions") == predictions


def record_seconds(out_dir: Path, train: float, predict: float = 0.0) -> None:
    """The wall seconds a fold took (training, resumed runs included; predicting), read by the summary's time
    budget lines. Written before done.json, and kept out of it: done.json is the same on every rerun."""
    write_json(Path(out_dir) / SECONDS_FILE, {"train": round(train, 2), "predict": round(predict, 2),
                                             "seconds": round(train + predict, 2)})


def fold_seconds(out_dir: Path) -> dict:
    """{train, predict, seconds} of a finished fold; {} when it has no record (trained before they existed)."""
    return read_json(Path(out_dir) / SECONDS_FILE) or {}
