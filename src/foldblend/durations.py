"""Durations as people write them (`--time-limit 1h30`) and as the summary prints them."""
from __future__ import annotations

import re

_UNITS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1, "": 1}


def parse_duration(text: str) -> float:
    """Seconds from `2h`, `90m`, `1h30m`, `1h30` (a bare number after a unit is the next unit down: 1h30 = 1h30m,
    5m30 = 5m30s), `1.5h`, `45min`, `600s` or `600` (a bare number alone: seconds, as AutoGluon's time_limit)."""
    s = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(d|h|min|m|s|)", s)
    bad = ValueError(f"--time-limit: cannot read {text!r}; give e.g. 2h, 90m, 1h30m, 1h30 (= 1h30m) or 3600 (seconds), "
                     f"units largest first, each once")
    if not s or not parts or "".join(n + u for n, u in parts) != s or re.search(r"\d\s+\d", str(text)):
        raise bad
    order = ["d", "h", "m", "s"]
    units = [u.replace("min", "m") for _, u in parts]
    if "" in units[:-1] or (len(units) > 1 and units[-1] == "" and units[-2] == "s"):
        raise bad  # a bare number is the last part, and only after a unit with one below it
    if len(units) > 1 and units[-1] == "":
        units[-1] = order[order.index(units[-2]) + 1]
    ranks = [order.index(u) if u else 3 for u in units]
    if ranks != sorted(set(ranks)):
        raise bad  # 30m1h, 1h1h
    seconds = sum(float(n) * _UNITS[u] for (n, _), u in zip(parts, units))
    if seconds <= 0:
        raise ValueError(f"--time-limit must be positive, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"
