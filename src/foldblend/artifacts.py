"""Atomic writes and the ensemble-member contract (oof/<exp>/oof.npz, test.npz, holdout.npz, scores.json).

Every file a later stage reads is written to a temporary name in the same folder and renamed into
place, so a kill at any moment leaves either the old file or the new one, never half of one (and a
temporary that the next run of the stage owning the folder removes: `safety.sweep_temporaries`).
Files get the mode a plain `open(path, "w")` gives under the umask, so reports and CSVs can be shared.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from foldblend.errors import FoldblendError
from foldblend.safety import create_temporary, remove


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = create_temporary(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp_path):  # name the file being written, not its temporary
            e.filename, e.filename2 = str(path), None
        raise
    finally:
        remove(tmp_path, inside=path.parent)  # a no-op after the rename


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_json(path: str | Path) -> dict | None:
    """A JSON file's content, or None where it is missing, unreadable or not JSON (an optional artifact)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def write_csv(path: str | Path, df, **kwargs) -> None:
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


class _Recording:
    """A file whose write errors are kept: torch.save turns an OSError into an opaque RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def write_torch(path: str | Path, obj) -> None:
    """torch.save(obj) atomically; a full disk raises the OSError itself (one clear line in the CLI)."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Recording(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


# ----------------------------------------------------------------------------- the member contract

@dataclass
class Member:
    """One ensemble member: what `oof/<name>/` holds, loaded and checked."""

    name: str
    classes: list[str]
    ids: np.ndarray          # (N,) train image ids, folds.csv order
    labels: np.ndarray       # (N,) class indices
    fold: np.ndarray         # (N,) fold of each image
    views: list[str]         # TTA view names
    oof_logits: np.ndarray   # (V, N, C)
    test_ids: np.ndarray     # (M,) sample-submission order (M = 0: no test set)
    test_logits: np.ndarray  # (F, V, M, C)
    scores: dict
    holdout_ids: np.ndarray = field(default_factory=lambda: np.empty(0, str))  # (H,) folds.csv's fold -1 rows
    holdout_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # (H,)
    holdout_logits: np.ndarray | None = None  # (F, V, H, C): every fold model on every held-out image

    def __post_init__(self):
        if self.holdout_logits is None:  # no held-out rows: H = 0
            f, v = self.test_logits.shape[:2]
            self.holdout_logits = np.zeros((f, v, 0, self.oof_logits.shape[2]), np.float32)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class ContractError(FoldblendError):
    """An oof/<exp>/ folder does not fulfil the ensemble-member contract."""


def save_member(out_dir: str | Path, *, classes, ids, labels, fold, views, oof_logits, test_ids,
                test_logits, scores: dict, holdout_ids=(), holdout_labels=(), holdout_logits=None) -> None:
    """Write the member's files; holdout.npz always (H = 0 rows when the split has no held-out images)."""
    out_dir = Path(out_dir)
    oof_logits = np.asarray(oof_logits, dtype=np.float32)
    test_logits = np.asarray(test_logits, dtype=np.float32)
    views = np.asarray(list(views))
    if holdout_logits is None:
        holdout_logits = np.zeros((test_logits.shape[0], len(views), 0, oof_logits.shape[2]), np.float32)
    # oof.npz marks a complete member: remove it first, so a kill while rewriting leaves no member at all
    # (remade on the next run) rather than a new test.npz beside an old oof.npz
    remove(out_dir / "oof.npz", inside=out_dir)
    write_npz(out_dir / "test.npz", ids=np.asarray(test_ids).astype(str), views=views, logits=test_logits)
    write_npz(out_dir / "holdout.npz", ids=np.asarray(holdout_ids).astype(str),
              labels=np.asarray(holdout_labels, dtype=np.int64), views=views,
              logits=np.asarray(holdout_logits, dtype=np.float32))
    write_json(out_dir / "scores.json", {**scores, "classes": list(classes)})
    # oof.npz last: its presence marks the member complete.
    write_npz(out_dir / "oof.npz", ids=np.asarray(ids).astype(str), labels=np.asarray(labels, dtype=np.int64),
              fold=np.asarray(fold, dtype=np.int64), views=views, logits=oof_logits)


def load_member(member_dir: str | Path) -> Member:
    member_dir = Path(member_dir)
    files = {n: member_dir / n for n in ("oof.npz", "test.npz", "scores.json")}
    missing = [n for n, p in files.items() if not p.exists()]
    if missing:
        raise ContractError(f"{member_dir}: missing {', '.join(missing)} (run `foldblend train` for this experiment)")
    with np.load(files["oof.npz"], allow_pickle=False) as z:
        oof = {k: z[k] for k in z.files}
    with np.load(files["test.npz"], allow_pickle=False) as z:
        test = {k: z[k] for k in z.files}
    scores = json.loads(files["scores.json"].read_text(encoding="utf-8"))
    classes = list(scores.get("classes", []))
    holdout = _load_holdout(member_dir / "holdout.npz", test["logits"].shape[0], oof["views"], oof["logits"].shape[2])
    v, n, c = oof["logits"].shape
    problems = []
    if len(oof["ids"]) != n or len(oof["labels"]) != n or len(oof["fold"]) != n:
        problems.append(f"oof.npz ids/labels/fold lengths do not match logits' N={n}")
    if len(oof["views"]) != v:
        problems.append(f"oof.npz has {len(oof['views'])} view names for {v} views of logits")
    if c != len(classes):
        problems.append(f"logits have {c} classes but scores.json lists {len(classes)}")
    if test["logits"].ndim != 4 or test["logits"].shape[2] != len(test["ids"]) or test["logits"].shape[3] != c:
        problems.append(f"test.npz logits shape {test['logits'].shape} does not match (F, V, {len(test['ids'])}, {c})")
    if list(test["views"]) != list(oof["views"]):
        problems.append("test.npz and oof.npz name different TTA views")
    h = holdout["logits"]
    if h.ndim != 4 or h.shape[1:] != (v, len(holdout["ids"]), c) or len(holdout["labels"]) != h.shape[2]:
        problems.append(f"holdout.npz logits shape {h.shape} does not match (F, {v}, {len(holdout['ids'])}, {c})")
    if list(holdout["views"]) != list(oof["views"]):
        problems.append("holdout.npz and oof.npz name different TTA views")
    if problems:
        raise ContractError(f"{member_dir}: " + "; ".join(problems))
    return Member(name=member_dir.name, classes=classes, ids=oof["ids"].astype(str), labels=oof["labels"],
                  fold=oof["fold"], views=[str(x) for x in oof["views"]], oof_logits=oof["logits"],
                  test_ids=test["ids"].astype(str), test_logits=test["logits"], scores=scores,
                  holdout_ids=holdout["ids"].astype(str), holdout_labels=holdout["labels"],
                  holdout_logits=holdout["logits"])


def _load_holdout(path: Path, n_fold_models: int, views, n_classes: int) -> dict:
    """holdout.npz, or no held-out rows when a member was made without one (older members, other kinds)."""
    if not path.exists():
        return {"ids": np.empty(0, str), "labels": np.empty(0, np.int64), "views": np.asarray(views),
                "logits": np.zeros((n_fold_models, len(views), 0, n_classes), np.float32)}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def member_digest(member_dir: str | Path) -> str:
    """A digest of a member's prediction files: a blend records it, so a later change is noticed."""
    import hashlib

    h = hashlib.sha256()
    for name in ("oof.npz", "test.npz", "holdout.npz"):
        if Path(member_dir, name).exists():
            h.update(Path(member_dir, name).read_bytes())
    return h.hexdigest()[:16]


def changed_members(oof_root: str | Path, recorded: dict[str, str]) -> list[str]:
    """Members whose files differ from (or are gone since) the digests a blend recorded."""
    out = []
    for name, digest in recorded.items():
        d = Path(oof_root) / name
        if not (d / "oof.npz").exists() or member_digest(d) != digest:
            out.append(name)
    return out
