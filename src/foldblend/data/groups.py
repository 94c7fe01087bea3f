"""The user's own groups (same patient, same scene, same product): they win over every automatic grouping.

Two ways to give them: a `group` column in the train CSV (or the column `group_column` names in
competition.yaml), or `input/groups.csv` with columns image,group, which works for every layout and
wins over the CSV column for the images it lists. An image is named by its path inside input/, its
path inside the train folder, its file name or its stem (when that names one train image). Images
without a user group keep the automatic ones (pHash and semantic), but those never join an image to
a user group: the user said which images belong together.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldblend.data.find import Competition
from foldblend.data.read import resolves_inside
from foldblend.data.tables import TableError, read_table

GROUPS_FILE = "groups.csv"


class GroupsError(ValueError):
    """groups.csv is malformed or names images that are not train images; the message says how to fix it."""


def _lookup(train_images: list[str]) -> dict[str, list[int]]:
    """Every name an image can be called by -> its rows (several rows: an ambiguous name)."""
    names: dict[str, list[int]] = {}
    for i, image in enumerate(train_images):
        p = Path(image)
        keys = {image, p.name, p.stem, *("/".join(p.parts[j:]) for j in range(1, len(p.parts)))}
        for key in keys:
            names.setdefault(key, []).append(i)
    return names


def read_groups_file(path: Path, train_images: list[str]) -> dict[int, str]:
    """{train row: group name} from a groups CSV (image,group); errors name the file and the fix."""
    try:
        df = read_table(path, "groups file", "write it as a CSV with a header image,group")
    except TableError as e:
        raise GroupsError(str(e)) from None
    cols = {c.strip().lower(): c for c in df.columns}
    if "image" not in cols or "group" not in cols:
        raise GroupsError(f"{path}: needs the columns image,group (found {list(df.columns)}); one row per train "
                          f"image that belongs to a group")
    names = _lookup(train_images)
    out: dict[int, str] = {}
    unknown, ambiguous, conflicts = [], [], []
    for line, (image, group) in enumerate(zip(df[cols["image"]].str.strip(), df[cols["group"]].str.strip()), start=2):
        rows = names.get(image.replace("\\", "/"))
        if not rows:
            unknown.append(f"{image!r} (line {line})")
        elif len(rows) > 1:
            ambiguous.append(f"{image!r} (line {line})")
        elif group == "":
            raise GroupsError(f"{path}: line {line}: empty group for {image!r}; give a group or drop the line")
        elif out.get(rows[0], group) != group:
            conflicts.append(f"{image!r} ({out[rows[0]]!r} and {group!r})")
        else:
            out[rows[0]] = group
    if unknown:
        raise GroupsError(f"{path}: {len(unknown)} image(s) are not train images, e.g. {', '.join(unknown[:5])}; name "
                          f"each by its path inside input/ (as folds/scan.csv lists it), or drop the line")
    if ambiguous:
        raise GroupsError(f"{path}: {len(ambiguous)} name(s) match several train images, "
                          f"e.g. {', '.join(ambiguous[:5])}; "
                          f"use the path inside input/")
    if conflicts:
        raise GroupsError(f"{path}: image(s) listed in two groups: {', '.join(conflicts[:5])}; keep one line per image")
    return out


def user_groups(comp: Competition) -> np.ndarray | None:
    """(N train,) object array of user group names (None where an image has none), or None without any."""
    n = len(comp.train)
    groups = np.full(n, None, dtype=object)
    given = False
    if "group" in comp.train.columns:
        column = comp.train["group"].to_numpy(dtype=object)
        listed = pd.notna(column)
        groups[listed] = column[listed]
        given = bool(listed.any())
    path = comp.root / GROUPS_FILE
    if path.is_file() and not resolves_inside(path, comp.root):  # everything is read from inside input/
        raise GroupsError(f"{path}: resolves to {path.resolve()}, outside {comp.root.name}/ (a symbolic link); copy "
                          f"it into {comp.root.name}/, or make {comp.root.name}/ itself a link to the folder "
                          f"holding the whole competition")
    if path.is_file():
        for row, group in read_groups_file(path, comp.train["image"].astype(str).tolist()).items():
            groups[row] = group
        given = True
    return groups if given else None


def with_user_groups(automatic: np.ndarray, user: np.ndarray | None) -> np.ndarray:
    """Group codes where the user's groups win: listed images take their user group, the others keep
    the automatic group (never merged into a user group)."""
    automatic = np.asarray(automatic)
    if user is None:
        return automatic
    user = np.asarray(user, dtype=object)
    listed = pd.notna(user)
    keys = np.where(listed, np.array(["u\0" + str(g) for g in user], dtype=object),
                    np.array(["a\0" + str(g) for g in automatic], dtype=object))
    return pd.factorize(keys)[0].astype(np.int64)
