"""One member as the time limit sees it (`running.budget.TimeKeeper`): its plan, what it has measured,
and what its trial is worth."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TRIAL_FRACTION = 1 / 3   # of a network's epochs, trained on fold 0 before it is scored
FLOOR_FRACTION = 0.5     # a network shortened below half its epochs is left out instead
# a network's trial score, projected to its last epoch: plus this share of the straight line through the trial's
# epochs (learning curves flatten); on 97 full-schedule folds of bench/ runs it took the trial's mean error from
# -0.106 to +0.000 (mean |error| 0.114 -> 0.076; flat at 0.073-0.083 for shares 0.3-0.6)
CURVE_SHARE = 0.5
RISING = 0.0005          # a value this far above the trial's score is said ("rising: about ...", "projected ...")


@dataclass
class Member:
    name: str
    rank: int                      # init's order (its priority), for ties
    epochs: int                    # allowed per fold now (<= the config's); 0 for a head
    config_epochs: int
    folds: list[int]               # pending folds, in order
    n_folds: int
    estimate_s: float | None       # init's estimate for all its folds
    done_epochs: dict = field(default_factory=dict)   # fold -> epochs trained so far (paused trial)
    epoch_seconds: list = field(default_factory=list)  # measured, in order
    fold_seconds: list = field(default_factory=list)   # measured wall seconds of finished folds (heads)
    predict_seconds: list = field(default_factory=list)
    spent: float = 0.0
    score: float | None = None     # the trial's held-out macro-F1
    curve: list = field(default_factory=list)  # the trial's held-out macro-F1 after each epoch
    trial_epochs: int = 0
    status: str = "planned"        # planned | trial | going on | finished | left out
    lowest: int | None = None      # the fewest epochs its allocation let it go down to (at most its floor)

    @property
    def trains_epochs(self) -> bool:
        return self.config_epochs > 0

    @property
    def awaits_trial(self) -> bool:
        """Its fold 0 is pending: the first fold the time limit runs is its trial."""
        return bool(self.folds) and self.folds[0] == 0

    @property
    def value(self) -> float:
        """The trial's score, for a network projected to its config's epochs along the trial's learning curve:
        the score plus `CURVE_SHARE` of the least-squares line's rise over the epochs still to come (never below
        the score, never above 1). A network paused at a third of its schedule is not compared as it is with a
        head that finished its fold."""
        if self.score is None:
            return 0.0
        if not self.trains_epochs or len(self.curve) < 2 or self.trial_epochs >= self.config_epochs:
            return self.score
        slope = max(float(np.polyfit(np.arange(len(self.curve)), self.curve, 1)[0]), 0.0)
        return min(1.0, self.score + CURVE_SHARE * slope * (self.config_epochs - self.trial_epochs))

    @property
    def floor(self) -> int:
        return max(self.trial_epochs, 1, math.ceil(FLOOR_FRACTION * self.config_epochs))

    @property
    def bound(self) -> int:
        """How far re-planning may shorten it before leaving it out: what its allocation allowed (its floor, or
        lower for the best network, rather than none); its floor before it is allocated."""
        return self.floor if self.lowest is None else self.lowest


def rising(value: float | None, score: float | None) -> bool:
    """A trial's value said beside its score: projected above it by more than the printed digits show."""
    return value is not None and score is not None and value > score + RISING


def mean_recent(values: list[float], n: int = 2) -> float:
    recent = values[-n:]
    return sum(recent) / len(recent)
