"""One fold job on a worker machine (a Ray task's body): check the project is the driver's, reload its
data, train, and send the fold's lines back to the driver.

Nothing here imports Ray: the Ray executor wraps these functions in tasks, and the tests call them
directly. The storage assumption is a project folder on a file system every node mounts at the same
path (NFS, Lustre, a cloud file share): a worker reads the images' cache and writes
`models/<exp>/fold_<k>/` there, and the driver then reads what it wrote.
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from foldblend.artifacts import write_text
from foldblend.members.signatures import fold_signature, predict_signature
from foldblend.paths import Project
from foldblend.running.experiment import load_train_data
from foldblend.running.fold import run_fold
from foldblend.running.jobs import FoldJob

PROBE = ".executor_probe"   # models/<this>: a token the driver writes and every worker must read back
SHARED_FS = ("the Ray executor needs the project folder on a file system that every node mounts at the "
             "same path (see docs/scale-out.md)")


class ProjectNotVisible(RuntimeError):
    """A worker does not see the driver's project folder."""


def write_probe(project: Project) -> str:
    """A fresh token in the project: a worker that reads it back sees this very folder, not a copy."""
    token = secrets.token_hex(8)
    write_text(project.models / PROBE, token)
    return token


def check_project(root: str | Path, token: str, wait_s: float = 10.0) -> str:
    """This machine's name when it sees the driver's project at `root`; else ProjectNotVisible.

    A network file system may cache "no such file" for a few seconds, so a missing or old token is
    read again until `wait_s` has passed.
    """
    host, root = socket.gethostname(), Path(root)
    probe = root / "models" / PROBE
    deadline = time.monotonic() + wait_s
    while True:
        if not root.is_dir():
            why = f"{host} cannot see the project folder {root} (no such folder there)"
        else:
            try:
                seen = probe.read_text(encoding="utf-8")
            except OSError:
                seen = None
            if seen == token:
                return host
            why = (f"{host} sees a folder at {root}, but not the one the driver writes to "
                   f"(models/{PROBE} is {'missing' if seen is None else 'different'} there)")
        if time.monotonic() >= deadline:
            raise ProjectNotVisible(f"{why}: {SHARED_FS}")
        time.sleep(0.5)


def run_job(root: str | Path, job: FoldJob, token: str, emit: Callable[[str], object] | None = None,
            progress: bool = True) -> dict:
    """Train one fold job here, exactly as the local executor would, and return its done.json.

    Runs any member kind through `running.fold.run_fold`, which trains with the config's `threads` (not
    the CPUs this worker was given: the weights would then depend on the machine). The fold's own resume
    does the rest: a task retried after its process died continues from the fold's last.pt.
    """
    host = check_project(root, token)
    with forward_output(emit) if emit is not None else contextlib.nullcontext():
        if progress:
            print(f"[{job.label}] on {host} (pid {os.getpid()}, {job.cfg.threads} thread(s))", flush=True)
        data = load_train_data(job.cfg, Project(Path(root)), progress=False)
        seen = {"weights": fold_signature(job.cfg, data), "predictions": predict_signature(job.cfg, data)}
        planned = {"weights": job.signature, "predictions": job.predictions}
        if seen != planned:
            differs = [k for k in seen if seen[k] != planned[k]]
            raise ValueError(f"[{job.label}] {host} reads other data than the driver planned on (the "
                             f"{' and '.join(differs)} signatures differ): were input/ or folds/ changed "
                             f"during the run, or is the project folder not the same on every node?")
        return run_fold(job.cfg, job.fold, data, Path(job.out_dir), progress=progress)


class LineStream(io.TextIOBase):
    """A text stream that hands each complete line to `emit` and copies it to `echo`.

    Progress bars redraw one terminal line with carriage returns; away from a terminal they are noise
    (and never end a line), so writes that start with one are dropped.
    """

    def __init__(self, emit: Callable[[str], object], echo=None):
        self.emit, self.echo, self.buffer_ = emit, echo, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text.startswith("\r"):
            return len(text)
        if self.echo is not None:
            self.echo.write(text)
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            if line.strip():
                self.emit(line)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def close_line(self) -> None:
        if self.buffer_.strip():
            self.emit(self.buffer_)
        self.buffer_ = ""


@contextlib.contextmanager
def forward_output(emit: Callable[[str], object]):
    """stdout and stderr of the block, line by line, to `emit` (and still to this process's own logs)."""
    out, err = LineStream(emit, sys.stdout), LineStream(emit, sys.stderr)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            yield
        finally:
            out.close_line()
            err.close_line()
