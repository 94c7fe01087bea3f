"""The single source of paths: every stage asks a `Project` where things live."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> "Project":
        return cls(Path(root).resolve())

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def folds_dir(self) -> Path:
        return self.root / "folds"

    @property
    def folds_csv(self) -> Path:
        return self.folds_dir / "folds.csv"

    @property
    def scan_csv(self) -> Path:
        return self.folds_dir / "scan.csv"

    @property
    def shift_json(self) -> Path:
        """The scan's train/test shift verdict (`scanning.shift_files`; read by train for `test_stats: auto`)."""
        return self.folds_dir / "shift.json"

    @property
    def init_record(self) -> Path:
        """What `foldblend init` planned: preset, time limit, estimates (the summary reports them)."""
        return self.folds_dir / "init.json"

    @property
    def cache_dir(self) -> Path:
        """Decoded, resized images shared by every experiment (decode once)."""
        return self.root / "models" / ".image_cache"

    @property
    def feature_cache_dir(self) -> Path:
        """Frozen-backbone features shared by every embedding member, the report and the scan."""
        return self.root / "models" / ".feature_cache"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def oof(self) -> Path:
        return self.root / "oof"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    def rel(self, path: str | Path) -> str:
        """`path` as the user should read it: relative to the project folder when inside it."""
        path = Path(path).resolve()
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def model_dir(self, exp: str, fold: int) -> Path:
        return self.models / exp / f"fold_{fold}"

    def oof_dir(self, exp: str) -> Path:
        return self.oof / exp
