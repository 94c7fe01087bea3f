"""The one error type users see, and one line for the operating system's errors.

Every error foldblend raises for bad input (a config, a competition folder, a CSV, a checkpoint, a
lock held by another run) is a `FoldblendError` whose message names the file and the fix; the CLI
prints it as one line. An `OSError` from anywhere (a full disk, a permission) becomes one line too.
"""
from __future__ import annotations

import errno
import os


class FoldblendError(ValueError):
    """Bad input or a refused operation; the message names the file and what to do."""


# errno -> what it means for the user and what to do about it
_FULL = "free some space (or raise the quota / file-size limit) and rerun the same command: finished work is kept"
_OS_FIXES = {
    errno.ENOSPC: ("no space left on the device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", _FULL),
    errno.EFBIG: ("file too large for the file-size limit", _FULL),
    errno.EACCES: ("permission denied", "check the file's owner and permissions"),
    errno.EPERM: ("operation not permitted", "check the file's owner and permissions"),
    errno.EROFS: ("read-only file system", "run foldblend in a writable project folder"),
    errno.ENOENT: ("no such file or folder", "check the path"),
}


def os_error_line(e: OSError) -> str:
    """`e` as one line: what failed, on which file, and the fix."""
    if e.errno is None:  # raised by foldblend with its own message (e.g. FileNotFoundError("... run X"))
        return " ".join(str(e).split())
    what, fix = _OS_FIXES.get(e.errno, (e.strerror or type(e).__name__, "check the file and rerun"))
    where = " -> ".join(os.fspath(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{where + ': ' if where else ''}{what}; {fix}"
