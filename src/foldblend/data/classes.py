"""Class order: which class gets which index, and the table that shows it.

A class index is part of what a model means: a submission of class ids, a grader's "class id = the
order of the sub-folders", a checkpoint used elsewhere. So the order is a rule a person can state and
check, and every stage that turns indices into names prints the table it used.
"""
from __future__ import annotations

import re

from natsort import natsorted

from foldblend.errors import FoldblendError

CLASS_ORDERS = ("lexical", "natural")


class ClassOrderError(FoldblendError):
    """An explicit class list does not match the classes found."""


def order_classes(found: list[str], order: str | None = None, override: list[str] | None = None,
                  where: str = "competition.yaml") -> list[str]:
    """The classes in index order.

    `override` (an explicit list) wins and must list each found class once. `lexical` sorts by code
    point, exactly as torchvision's ImageFolder (`L2_10` before `L2_2`); `natural` compares digit runs
    as numbers (`L2_2` before `L2_10`). Without an order: numeric when every name is an integer
    (`2` before `10`), lexical otherwise.
    """
    if override is not None:
        if sorted(override) != sorted(found):
            raise ClassOrderError(
                f"{where}: classes must list each found class once; missing {sorted(set(found) - set(override))}, "
                f"unknown {sorted(set(override) - set(found))}"
                f"{', duplicated' if len(set(override)) != len(override) else ''}")
        return list(override)
    if order == "natural" or (order is None and all(re.fullmatch(r"-?\d+", c) for c in found)):
        # natsort reads a leading '-' as a separator, not a sign; integer names sort as numbers either way
        return sorted(found, key=int) if all(re.fullmatch(r"-?\d+", c) for c in found) else natsorted(found)
    if order not in (None, "lexical"):
        raise ClassOrderError(f"{where}: class_order must be one of {', '.join(CLASS_ORDERS)}, got {order!r}")
    return sorted(found)


def class_table(classes: list[str], width: int = 100) -> str:
    """`index class` pairs, several to a line: the mapping a model's outputs use."""
    cells = [f"{i:>{len(str(len(classes) - 1))}} {c}" for i, c in enumerate(classes)]
    cell_width = max(map(len, cells)) + 3
    per_line = max(1, width // cell_width)
    return "\n".join("  " + "".join(c.ljust(cell_width) for c in cells[i:i + per_line]).rstrip()
                     for i in range(0, len(cells), per_line))
