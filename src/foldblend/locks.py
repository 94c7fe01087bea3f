"""Locks between foldblend runs: one holder at a time, named in the error; a dead holder's lock is taken.

A lock is a small JSON file (pid, host, the process's start time, a token, the command) created
atomically (a complete temporary file hard-linked to the lock's name, which fails if it exists), so
it works on a project folder shared by several machines. Staleness is judged only on the holder's
own host: a lock whose pid is gone there (or now belongs to a later process) is taken over; a lock
of another host is never taken automatically (its pid means nothing here), and the error says which
file to delete if that run is known to be gone. Take-overs on one host are serialised by `flock` on
the lock's folder, so two runs cannot both take over the same stale lock.

Processes started by a lock holder to do its work (the per-device fold workers, remote executors)
run as its guests: the holder's token travels in the environment variable `LOCK_ENV`, and a process
whose environment names the token of the lock it needs proceeds without taking it.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from foldblend.errors import FoldblendError
from foldblend.safety import create_temporary, host_name, process_alive, process_started, remove

LOCK_ENV = "FOLDBLEND_LOCKS"   # comma-separated tokens of locks held for this process by its parent


class LockHeld(FoldblendError):
    """Another live run holds the lock."""


def read_holder(path: Path) -> dict | None:
    """The lock file's content; {} when it is unreadable (never one of ours: they are written whole)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def holder_alive(holder: dict) -> bool:
    """Whether the holder may still run: a live pid on this host, or any holder on another host."""
    if not holder.get("pid"):
        return False
    if holder.get("host") != host_name():
        return True
    return process_alive(holder["pid"], holder.get("started"))


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since', '?')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


@contextlib.contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """Serialise lock take-overs on this host (flock on the lock's folder; released if we die)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: creation stays atomic, only simultaneous take-overs are unguarded
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _guest_tokens() -> set[str]:
    return {t for t in os.environ.get(LOCK_ENV, "").split(",") if t}


@contextlib.contextmanager
def hold(path: str | Path, what: str, fix: str = "wait for it to finish", wait: float = 0.0) -> Iterator[dict]:
    """Hold the lock at `path` for the block; `what` names what it protects in the error message.

    Waits up to `wait` seconds for a live holder to finish (short critical sections such as a log
    update), then raises LockHeld naming it; takes over the lock of a dead holder (saying so).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = read_holder(path)
    if current and current.get("token") in _guest_tokens():
        yield current  # our parent holds it for us
        return
    me = {"pid": os.getpid(), "host": host_name(), "started": process_started(), "token": secrets.token_hex(8),
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv[:6])}
    tmp = create_temporary(path)
    deadline = time.monotonic() + wait
    try:
        try:
            tmp.write_text(json.dumps(me) + "\n", encoding="utf-8")
        except OSError as e:  # a full disk: name the lock, not its temporary
            e.filename, e.filename2 = str(path), None
            raise
        while not _take(path, tmp, what, fix, time.monotonic() >= deadline):
            time.sleep(0.1)
    finally:
        remove(tmp, inside=path.parent)
    previous = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = ",".join(sorted(_guest_tokens() | {me["token"]}))  # our worker processes are guests
    try:
        yield me
    finally:
        if previous is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous
        if (read_holder(path) or {}).get("token") == me["token"]:
            remove(path, inside=path.parent)


def _take(path: Path, tmp: Path, what: str, fix: str, last_try: bool) -> bool:
    """One attempt: True when the lock is ours; False to wait for a live holder; LockHeld on the last try."""
    with _folder_guard(path.parent):
        while True:
            try:
                os.link(tmp, path)  # atomic, and fails if the lock exists (also across machines)
                return True
            except FileExistsError:
                holder = read_holder(path)
                if holder is None:
                    continue  # released meanwhile: try again
                if holder_alive(holder):
                    if not last_try:
                        return False
                    raise LockHeld(f"{what} is in use by another foldblend run ({describe(holder)}): {fix}; "
                                   f"if that run is gone (e.g. its machine was restarted), delete {path}")
                print(f"taking over the lock {path.name} of a run that is gone "
                      f"({describe(holder) if holder else 'unreadable lock file'})")
                remove(path, inside=path.parent)


def live_holders(paths) -> list[dict]:
    """The live holders (other than this process) of the lock files among `paths`."""
    out = []
    for p in paths:
        holder = read_holder(Path(p))
        mine = holder and holder.get("pid") == os.getpid() and holder.get("host") == host_name()
        if holder and holder_alive(holder) and not mine:
            out.append(holder)
    return out
