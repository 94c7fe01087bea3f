"""Files in input/: visible sub-folders and images, Kaggle's capitalised names, and ids looked up as files."""
from __future__ import annotations

import os
from pathlib import Path

from foldblend.data.competition_config import CompetitionError
from foldblend.data.read import is_image_name


def hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not hidden(p.name))


def direct_images(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_file() and is_image_name(p.name) and not hidden(p.name)]


def walk(d: Path) -> tuple[list[Path], list[Path]]:
    """All visible files under d, split into (images, other files), in sorted order."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not hidden(n))
        for name in sorted(filenames):
            if not hidden(name):
                (images if is_image_name(name) else others).append(Path(dirpath) / name)
    return images, others


def pick(root: Path, names: tuple[str, ...], want_dir: bool = False) -> Path | None:
    """The entry of root whose lower-cased name comes first in `names` (Kaggle capitalises freely)."""
    entries = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir() == want_dir and not hidden(p.name)}
    return next((entries[n] for n in names if n in entries), None)


def relpath(p: Path, root: Path) -> str:
    """p relative to root, with forward slashes (how images are named in every table)."""
    return Path(os.path.relpath(p, root)).as_posix()


class FileIndex:
    """Looks ids up as a relative path first, then as a file name, a stem, or id + any image extension."""

    def __init__(self, folder: Path, root: Path, what: str = "test"):
        images, others = walk(folder)
        self.what = what
        self.others = [relpath(p, root) for p in others]
        self.exact: dict[str, str] = {}           # paths name exactly one file
        self.loose: dict[str, set[str]] = {}      # names and stems may name several
        for p in images:
            rel = relpath(p, root)
            inner = relpath(p, folder)
            for key in (inner, rel):
                self.exact[norm_key(key)] = rel
            for key in (p.name, inner[: -len(p.suffix)], p.stem):
                self.loose.setdefault(norm_key(key), set()).add(rel)

    def find(self, id_: str) -> str | None:
        """The one file an id names; an id that names several (a.jpg and a.png for id `a`) is an error."""
        key = norm_key(id_.strip().replace("\\", "/"))
        if key in self.exact:
            return self.exact[key]
        files = self.loose.get(key)
        if files and len(files) > 1:
            raise CompetitionError(f"{self.what} id {id_!r} matches several files: {', '.join(sorted(files)[:5])}; "
                                   f"remove the extra files or make the ids name one file each")
        return next(iter(files)) if files else None


def norm_key(key: str) -> str:
    suffix = Path(key).suffix
    return key[: -len(suffix)] + suffix.lower() if suffix and is_image_name(key) else key
