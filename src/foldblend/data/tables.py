"""Reading the CSVs people hand us (sample submissions, label files, logs) strictly, as text.

pandas guesses where a CSV is malformed: a row with one field too many turns the first column into
the index (a sample's ids then look "duplicated"), a short row is padded with blanks, an empty file
is "No columns to parse from file". A sample submission is a specification that is reproduced byte
for byte, so here nothing is guessed: the file must be UTF-8 text whose every row has the header's
number of fields, and anything else is one error naming the file, the line and the fix.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from foldblend.errors import FoldblendError


class TableError(FoldblendError):
    """A CSV file is not a table we can read; the message names the file, the line and the fix."""


def read_table(path: str | Path, what: str = "CSV file", fix: str = "") -> pd.DataFrame:
    """Every cell as a string, exactly as written (a UTF-8 byte-order mark is dropped from the header).

    `what` names the file's role ("sample submission") and `fix` says what to do, in every error.
    """
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TableError(f"{path}: cannot read the {what} ({e.strerror or e}){tail}") from None
    if not data.strip():
        raise TableError(f"{path}: the {what} is empty{' (0 bytes)' if not data else ''}{tail}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TableError(f"{path}: the {what} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                         f"save it as UTF-8{tail}") from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise TableError(f"{path}: the {what} holds a NUL byte on line {line}: it is binary, not CSV text{tail}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, lines = [], []
    try:
        for row in reader:
            if row:  # blank lines are skipped, as pandas does
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise TableError(f"{path}: line {reader.line_num} of the {what} is not valid CSV ({e}){tail}") from None
    if not rows:
        raise TableError(f"{path}: the {what} has no header line{tail}")
    header, body = rows[0], rows[1:]
    for row, line in zip(body, lines[1:]):
        if len(row) != len(header):
            raise TableError(f"{path}: line {line} of the {what} has {len(row)} field(s) but the header has "
                             f"{len(header)} ({','.join(header)[:80]}); fix or remove that line{tail}")
    seen = set()
    for name in header:
        if name in seen:
            raise TableError(f"{path}: the {what}'s header names column {name!r} twice{tail}")
        seen.add(name)
    return pd.DataFrame(body, columns=header, dtype=str) if body else pd.DataFrame(columns=header, dtype=str)
