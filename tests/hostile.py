"""Helpers of the hostile tests (tests/test_hostile_*.py): tiny projects built once per module and copied
per test, the CLI in this process or as a real child process, and what an error must look like."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import TINY_CONFIG, make_competition

from foldblend.cli import main

# child processes: one thread each, so several of them do not fight over the machine's cores
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def cli(root: Path, *args: str) -> int:
    """`foldblend --root ROOT ARGS` in this process; its exit status."""
    return main(["--root", str(root), *args])


def new_project(root: Path) -> Path:
    """input/ with a 3-class competition (12 images each, 9 test ids), 2 folds, folds/tiny.yaml."""
    make_competition(root)
    (root / "input" / "competition.yaml").write_text("n_splits: 2\n")
    (root / "folds" / "tiny.yaml").write_text(TINY_CONFIG)
    return root


def build_trained(root: Path) -> Path:
    """A project after scan, folds, train, blend and submit."""
    new_project(root)
    for stage in (["scan", "--quiet"], ["folds", "--quiet"], ["train", "--quiet"], ["blend"], ["submit"]):
        assert cli(root, *stage) == 0, stage
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A copy with the same mtimes (so every stage still finds its work finished)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def run_process(root: Path, *args: str, code: str | None = None, timeout: float = 600, **kwargs):
    """`foldblend --root ROOT ARGS` as a real child process (or python `code` given ROOT ARGS as argv)."""
    command = [sys.executable, "-c", code, str(root), *args] if code else \
        [sys.executable, "-m", "foldblend.cli", "--root", str(root), *args]
    return subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, timeout=timeout, **kwargs)


def start_process(root: Path, *args: str, code: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, str(root), *args] if code else \
        [sys.executable, "-m", "foldblend.cli", "--root", str(root), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)


def error_line(stderr: str) -> str:
    """The one line a failing command printed (then the FOLDBLEND_DEBUG hint), never a traceback.
    Libraries' own warnings (timm logs one for a 1-epoch cosine schedule) may come before it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) >= 2 and lines[-1].startswith("(set FOLDBLEND_DEBUG=1"), stderr
    assert [line for line in lines if line.startswith("foldblend ")] == [lines[-2]], stderr
    assert ": error: " in lines[-2], lines[-2]
    return lines[-2]


def temporaries(root: Path) -> list[str]:
    """Temporary files left anywhere in the project (relative names)."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob(".*.tmp*"))


def generated_files(root: Path) -> list[Path]:
    """Every file foldblend wrote (not input/ nor the fold configs)."""
    out = [p for d in ("models", "oof", "submissions") for p in (Path(root) / d).rglob("*") if p.is_file()]
    return out + [p for p in (Path(root) / "folds").iterdir() if p.is_file() and p.suffix != ".yaml"]
