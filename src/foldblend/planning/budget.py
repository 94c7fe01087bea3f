"""What a run of the candidates costs, and which of them, for how many epochs, fit a time budget.

The cost model counts what `foldblend train` does, with the probe's per-image seconds: per network,
k folds x epochs x the images a fold trains on, a validation pass per epoch (two with EMA), then every
fold model predicting its held-out fold, the test set and the holdout under each TTA view, plus each
image size decoded once into the cache; per embedding head, the features of every image under every
view once per backbone and size (shared by the heads on it), then a head fit per fold. Each kind
counts its own part (`MemberKind.run_cost`); the decode is shared by all.

Under a budget (`--time-limit`), a share is kept back for the blend, submission and report, members
are taken in the preset's priority order while they fit at no fewer than halfway between their
minimum and nominal epochs, and then every network's epochs are scaled by one factor between its
minimum and its nominal count so the whole plan fits. Epochs are never raised above nominal: a budget
is a limit, not a target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from foldblend.durations import format_duration
from foldblend.members.registry import get_kind
from foldblend.planning.presets import Candidate
from foldblend.planning.probe import Timing
from foldblend.planning.profile import DataProfile, Hardware

RESERVE_FRACTION = 0.10  # of the budget, for the blend (nested CV), submission, summary and report
RESERVE_MIN_S = 30.0
# The probe's few batches misjudge a whole run. On this project's quiet 2-core CPU machine, on one 438-image
# plan: probes of one pass estimated its networks 18% under to 18% over what they then took (and once a
# burst of other work doubled one); with two passes (the faster counts) the estimates were 19-21% under for
# all three networks, and the run spent 25% more on training than planned. A plan fits the time left for
# training with its estimate raised by this. Measured on CPU only: a GPU's error is not known yet.
ESTIMATE_MARGIN = 0.25


@dataclass
class Planned:
    """A candidate with its final epochs and, when probed, the seconds its folds are expected to take."""

    cand: Candidate
    seconds: float | None = None
    parts: dict = field(default_factory=dict)   # train / validate / predict / features / heads / decode seconds


@dataclass
class Plan:
    members: list[Planned]
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    budget: float | None = None        # the time limit, seconds
    usable: float | None = None        # what training may use of it
    probe_seconds: float = 0.0
    warning: str = ""

    @property
    def seconds(self) -> float | None:
        if any(p.seconds is None for p in self.members):
            return None
        return sum(p.seconds for p in self.members)


def member_cost(c: Candidate, t: Timing, profile: DataProfile, hw: Hardware, epochs: int,
                paid: set) -> dict:
    """Seconds by part for `c` at `epochs`: each image size decoded once, then what its kind's folds cost
    (`MemberKind.run_cost`); shared work already in `paid` (a size's decode, a backbone's features) is not
    counted again, and what this member pays is added to `paid`."""
    parts = {}
    size = c.values["img_size"]
    if ("decode", size) not in paid:
        paid.add(("decode", size))
        # the cache decodes in parallel threads; the probe timed one
        n = profile.n_train + profile.n_test + profile.n_holdout
        parts["decode"] = n * t.decode_per_image / max(1, min(hw.cpu_cores, 8))
    return parts | get_kind(c.kind, f"candidate {c.name}").run_cost(c.values, t, profile, epochs, paid)


def plan_members(cands: list[Candidate], profile: DataProfile, hw: Hardware, timings: dict[str, Timing] | None,
                 budget: float | None = None, probe_seconds: float = 0.0) -> Plan:
    """Which candidates, at how many epochs: all at nominal epochs without a budget; else what fits."""
    if budget is not None and timings is None:
        raise ValueError("a time limit needs the probe's timings (run init without --no-probe, on the machine "
                         "that will train)")
    if timings is None:
        return Plan([Planned(c) for c in cands], budget=budget, probe_seconds=probe_seconds)

    def costs(chosen: list[Candidate], fraction: float) -> list[dict]:
        paid: set = set()
        return [member_cost(c, timings[c.name], profile, hw, _epochs_at(c, fraction), paid) for c in chosen]

    def total(chosen, fraction) -> float:
        return sum(sum(p.values()) for p in costs(chosen, fraction))

    if budget is None:
        chosen, fraction, dropped, usable, warning = list(cands), 1.0, [], None, ""
    else:
        usable = budget - probe_seconds - max(RESERVE_MIN_S, RESERVE_FRACTION * budget)
        chosen, dropped, warning = [], [], ""
        for c in cands:
            need = total(chosen + [c], 0.5)
            if need * (1 + ESTIMATE_MARGIN) <= usable:
                chosen.append(c)
            else:
                dropped.append((c.name, f"does not fit: the members before it and this one need "
                                        f"{format_duration(need)} at half their epochs "
                                        f"(+{ESTIMATE_MARGIN:.0%} for the probe's error), "
                                        f"the budget leaves {format_duration(max(usable, 0))} for training"))
        if not chosen:  # the budget is below the cheapest plan: write the first member anyway, and say so
            chosen, dropped = [cands[0]], dropped[1:]
            warning = (f"the time limit leaves {format_duration(max(usable, 0))} for training, less than the "
                       f"first member alone needs ({format_duration(total(chosen, 0.0))}): it is written at its "
                       f"minimum; raise --time-limit or pick --preset fast")
        fraction = _largest_fraction(lambda f: total(chosen, f) * (1 + ESTIMATE_MARGIN), usable)
    members = []
    for c, parts in zip(chosen, costs(chosen, fraction)):
        if get_kind(c.kind).trains_epochs and budget is not None and _epochs_at(c, fraction) != c.epochs:
            c = c.with_epochs(_epochs_at(c, fraction),
                              f"{_epochs_at(c, fraction)} of the {c.epochs} the preset gives: what fits "
                              f"the {format_duration(budget)} time limit (probe: "
                              f"{format_duration(parts['train'] / max(_epochs_at(c, fraction), 1))} of training "
                              f"per epoch over all folds)")
        members.append(Planned(c, sum(parts.values()), {k: round(v, 1) for k, v in parts.items()}))
    return Plan(members, dropped, budget, usable, probe_seconds, warning)


def _epochs_at(c: Candidate, fraction: float) -> int:
    """Epochs between the minimum (fraction 0) and nominal (1); kinds without epochs (heads) have none."""
    if not get_kind(c.kind).trains_epochs:
        return 0
    return max(c.min_epochs, min(c.epochs, int(math.floor(c.min_epochs + fraction * (c.epochs - c.min_epochs)))))


def _largest_fraction(total, usable: float) -> float:
    """The largest fraction in [0, 1] whose plan fits `usable` (cost grows with it; bisection)."""
    if total(1.0) <= usable:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= usable else (lo, mid)
    return lo
