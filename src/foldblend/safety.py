"""Writes and deletions that stay inside the project: plain names, one removal helper, temporaries.

- `check_plain_name`: experiment and submission names become folder and file names, so they are
  plain names (no separators, no `..`, no leading `_` or `.`, which are foldblend's own folders).
- `remove`: every file or folder foldblend deletes goes through it; it refuses a path that does not
  resolve strictly inside the generated folder the caller names, so no name, symlink or `..` can
  point a deletion elsewhere.
- `resolve_inside`: where a write really goes (every link resolved), if that is inside the project.
- `create_temporary` / `create_temporary_dir` / `sweep_temporaries`: a temporary file (or folder) carries
  its writer's pid and host in its name and the mode a plain `open(path, "w")` gives (umask applied); the
  next run of the stage that owns a folder removes the temporaries of writers that are gone (a SIGKILL
  leaves them).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterable

from foldblend.errors import FoldblendError

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 120


class UnsafePathError(FoldblendError):
    """A name or path would reach outside the project's generated folders."""


def check_plain_name(name: str, what: str, where: str = "") -> str:
    """`name` if it is a plain name (letters, digits, `-`, `_`, `.`, starting with a letter or digit)."""
    if isinstance(name, str) and PLAIN_NAME.fullmatch(name) and len(name) <= MAX_NAME:
        return name
    raise UnsafePathError(f"{where + ': ' if where else ''}{what} {name!r} is not a plain name: use letters, "
                          f"digits, '-', '_' and '.', starting with a letter or digit (it becomes a folder or "
                          f"file name, so no '/', '..' or leading '_'/'.')")


def host_name() -> str:
    """This machine's name as it appears in temporary-file names and locks."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


# ----------------------------------------------------------------------------- removal

def _target(path: str | Path) -> Path | None:
    """`path` with its folder resolved (symlinks and `..` as the OS follows them) and its own name kept,
    so a symlink is itself the target, never what it points to; None for a name such as `..`."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return None
    return Path(os.path.realpath(path.parent)) / path.name


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path` lies strictly inside `root`, both resolved as the OS would."""
    target = _target(path)
    root = Path(os.path.realpath(root))
    return target is not None and target != root and target.is_relative_to(root)


def resolve_inside(path: str | Path, root: str | Path) -> Path | None:
    """`path` with every link and `..` resolved (realpath), if that lies strictly inside `root` (resolved too);
    else None. What a write goes to: a link anywhere on the way cannot lead it out of `root`."""
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real if real != root and real.is_relative_to(root) else None


def remove(path: str | Path, inside: str | Path | Iterable[str | Path]) -> bool:
    """Delete a file, a symlink (not its target) or a folder tree, only if it lies inside `inside`.

    `inside` is the generated folder the caller owns (models/, models/<exp>/, oof/_blend/, ...), or
    several. Returns whether something was deleted; raises UnsafePathError for anything outside.
    """
    roots = [inside] if isinstance(inside, (str, Path)) else list(inside)
    if not any(is_inside(path, r) for r in roots):
        raise UnsafePathError(f"refusing to delete {path}: it does not resolve inside "
                              f"{' or '.join(str(r) for r in roots)}")
    target = _target(path)  # what was checked is what is deleted
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    except FileNotFoundError:
        return False
    return True


# ----------------------------------------------------------------------------- processes

def process_alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` on this host runs (not a zombie); with `started` (its create_time), also
    that it is that process and not a later one that reuses the pid."""
    import psutil

    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, ValueError, OverflowError):
        return False
    except psutil.AccessDenied:  # another user's live process
        return True


def process_started(pid: int | None = None) -> float:
    """When process `pid` (default: this one) started, as a time.time() value."""
    import psutil

    return psutil.Process(pid or os.getpid()).create_time()


# ----------------------------------------------------------------------------- temporaries

# .<target>.<pid>@<host>.<8 hex>.tmp<suffix>: who wrote it is in the name
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[0-9a-f]{8}\.tmp(\.[^./]*)?")
# what tempfile.mkstemp made before writers were named (.<target>.<8 chars>.tmp<suffix>)
LEGACY_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp(\.[^./]*)?")


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}@{host_name()}.{secrets.token_hex(4)}.tmp{suffix}")


def create_temporary(path: str | Path) -> Path:
    """Create an empty temporary file next to `path`, named for this process, with open()'s mode."""
    path = Path(path)
    while True:
        tmp = _temporary_name(path, path.suffix)
        try:  # 0o666 and the kernel applies the umask: the mode a plain open(path, "w") gives
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def create_temporary_dir(path: str | Path, suffix: str = "") -> Path:
    """Create an empty temporary folder next to `path`, named for this process (as `create_temporary`), with
    the mode a plain mkdir gives (umask applied; mkdtemp's is 0700)."""
    path = Path(path)
    while True:
        tmp = _temporary_name(path, suffix)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def is_stale_temporary(path: Path, before: float | None = None) -> bool:
    """A temporary whose writer is gone: a dead (or reused) pid on this host; for an unnamed writer
    (an older foldblend), a file last written before `before` (default: this process's start)."""
    try:
        mtime = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    m = TEMP_NAME.fullmatch(path.name)
    if m is not None:
        if m["host"] != host_name():
            return False  # another machine's writer: its pid means nothing here
        pid = int(m["pid"])
        if pid == os.getpid():
            return False
        import psutil

        try:
            proc = psutil.Process(pid)
            # a pid reused by a process started after the file was last written is not its writer
            return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > mtime + 1.0
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:
            return False
    if LEGACY_TEMP_NAME.fullmatch(path.name):
        return mtime < (process_started() if before is None else before)
    return False


def sweep_temporaries(folder: str | Path, recursive: bool = False, folders: bool = False) -> list[Path]:
    """Remove the stale temporaries in `folder` (and below it with `recursive`; temporary folders too with
    `folders`); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")
    gone = []
    started = process_started()
    for p in sorted(candidates):
        if (p.is_file() or p.is_symlink() or (folders and p.is_dir())) and is_stale_temporary(p, started) \
                and remove(p, inside=folder):
            gone.append(p)
    return gone


def say_swept(gone: list[Path], project=None) -> None:
    """One line naming what a sweep removed (nothing when it removed nothing)."""
    if gone:
        names = [project.rel(p) if project is not None else str(p) for p in gone]
        print(f"removed {len(gone)} temporary file(s) left by interrupted runs: {', '.join(names[:3])}"
              + (" ..." if len(names) > 3 else ""))
