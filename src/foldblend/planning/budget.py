"""What a run of the candidates costs, and which of them, at how many epochs, go into a time-limited run.

The cost model counts what `foldblend train` does, with the probe's per-image seconds: per network,
k folds x epochs x the images a fold trains on, a validation pass per epoch (two with EMA), then every
fold model predicting its held-out fold, the test set and the holdout under each TTA view, plus each
image size decoded once into the cache; per embedding head, the features of every image under every
view once per backbone and size (shared by the heads on it), then a head fit per fold. Each kind
counts its own part (`MemberKind.run_cost`); the decode is shared by all.

Under a budget (`--time-limit`), a share is kept back for the blend, submission and report, and the
plan is one for `running.budget`, which holds the limit while training: it trains every member's trial
(fold 0, a third of a network's epochs) first and gives the time left to the members that scored best,
re-planning from what each epoch takes. So init does not choose members by cost in a fixed order, nor
size their epochs from the probe: every network keeps the preset's epochs (the train stage shortens
them), and every candidate is kept whose trial alone fits in the trials' share
(`running.budget.TRIAL_SHARE`); which trials run is decided while training. The estimates
are the probe's, which a loaded machine moves several-fold; the train stage replaces them with what it
measures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from foldblend.durations import format_duration
from foldblend.members.registry import get_kind
from foldblend.planning.presets import Candidate
from foldblend.planning.probe import Timing
from foldblend.planning.profile import DataProfile, Hardware
from foldblend.running.budget import TRIAL_FRACTION, TRIAL_SHARE

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

    def planned(chosen: list[Candidate]) -> list[Planned]:
        """Each one at its epochs, with its seconds by part (shared work counted on the first that pays it)."""
        paid: set = set()
        parts = [member_cost(c, timings[c.name], profile, hw, c.epochs, paid) for c in chosen]
        return [Planned(c, sum(p.values()), {k: round(v, 1) for k, v in p.items()}) for c, p in zip(chosen, parts)]

    if budget is None:
        return Plan(planned(cands), budget=None, probe_seconds=probe_seconds)
    usable = budget - probe_seconds - max(RESERVE_MIN_S, RESERVE_FRACTION * budget)
    chosen, dropped, warning, paid = [], [], "", set()
    for c in cands:
        # epochs stay the preset's: the train stage shortens them from what each epoch measurably takes (sized
        # here from the probe, a loaded machine wrote 2-5 epochs of 26 and a run that used 61% of its limit)
        # a candidate is kept when its trial alone fits the trials' share: which trials then run is decided
        # by the train stage from what the trials before it measured (the probe's estimate may be far off)
        tentative = set(paid)  # features and decodes the trials before it pay for are not counted again
        trial = _trial_cost(c, member_cost(c, timings[c.name], profile, hw, c.epochs, tentative), profile)
        if trial <= TRIAL_SHARE * usable:
            chosen.append(c)
            paid = tentative
        else:
            dropped.append((c.name, f"its trial ({TRIAL_FRACTION:.0%} of its epochs on fold 0) alone needs about "
                                    f"{format_duration(trial)}: the trials may use {TRIAL_SHARE:.0%} of the "
                                    f"{format_duration(max(usable, 0))} for training"))
    if not chosen:  # the budget is below the cheapest trial: write the first member anyway, and say so
        first = cands[0]
        if get_kind(first.kind).trains_epochs:
            first = first.with_epochs(first.min_epochs, f"{first.min_epochs} of the {first.epochs} the preset gives: "
                                                        f"the {format_duration(budget)} time limit is below its trial")
        chosen, dropped = [first], dropped[1:]
        warning = (f"the time limit leaves {format_duration(max(usable, 0))} for training, less than the first "
                   f"member's trial needs: it is written at its minimum epochs; raise --time-limit or pick "
                   f"--preset fast")
    return Plan(planned(chosen), dropped, budget, usable, probe_seconds, warning)


def _trial_cost(c: Candidate, parts: dict, profile: DataProfile) -> float:
    """Seconds of `c`'s trial: its share of fold 0 (a network: a third of its epochs; a head: the whole fold,
    features included), plus what it shares with no one (its decode)."""
    fold = sum(v for k, v in parts.items() if k not in ("decode", "features")) / max(profile.n_folds, 1)
    if get_kind(c.kind).trains_epochs:
        fold *= TRIAL_FRACTION
    return (fold + parts.get("features", 0.0) + parts.get("decode", 0.0)) * (1 + ESTIMATE_MARGIN)
