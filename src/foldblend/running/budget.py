"""A time limit held while training: trials first, then the budget to what scored, re-planned as it goes.

`foldblend init --time-limit` writes its candidates with a first estimate of their cost (the probe's few
batches, which a loaded machine can move several-fold); this is what then holds the limit, from what the
run itself measures (as AutoGluon's `time_limit`: each decision from the time left and the work left):

1. **Trials.** Fold 0 of every member first, cheapest first: a network for its first `TRIAL_FRACTION`
   of epochs (then paused, `members.gate.FoldPaused`: its `last.pt` resumes it if the member goes on, so
   no work is thrown away), a head on frozen features in full. Each trial's held-out macro-F1 is its
   measured value; a network's, a third of the way through its schedule, is projected to its last epoch
   along the trial's learning curve (`member_plan.Member.value`). The networks' trials together may use
   `TRIAL_SHARE` of the limit (a head's trial is a whole fold the member keeps, so it does not count), in
   equal parts for the networks not tried yet: a trial pauses sooner when its next epoch would overrun
   its part, and a network whose one epoch would not fit in it is left out before it starts.
2. **Allocation.** The time left goes to the members by value: heads first (seconds per fold), then the
   networks from the best value down (values within `TIE` of each other count as equal: the cheaper
   first, then init's order), each at the most epochs (never more than its config's) for
   which its remaining folds fit what the members before it left; below its floor (half its epochs,
   never fewer than its trial's) it is left out, except the first network, which may go down to its
   trial's epochs (a short network beats none), and, when its value is above every member going on,
   to one epoch per later fold rather than leave the time unused (its fold 0 keeps what its trial
   trained, and predicts without training on when it has that many already).
3. **Re-planning.** Before every fold and after every epoch the work left is projected from the epochs
   just timed (so load that comes or goes moves the plan, not just the probe): when it overruns the
   time left, the other networks' later folds are shortened towards their floor (the last-ranked first; the
   network that went on below its floor, towards the fewest epochs its allocation allowed),
   then the running network's, then networks are left out (those without finished folds first), and
   last the running fold's epochs are cut below its floor (its learning-rate schedule compressed to end
   there).

Each change is one line saying what changed and why, and `record()` holds the trials, the decisions and
what each member spent (written to `folds/init.json` by the train stage; the summary prints it). Folds
are never dropped from a member that goes on: the blend needs every fold's out-of-fold predictions, so
a member is either finished (possibly with fewer epochs) or left out (its finished folds are kept; a
later `foldblend train` finishes it).
"""
from __future__ import annotations

import math
import time
from typing import Callable

from foldblend.durations import format_duration
from foldblend.members.gate import FoldPaused
from foldblend.members.registry import get_kind
from foldblend.running.jobs import FoldJob
from foldblend.running.member_plan import TRIAL_FRACTION, Member, mean_recent, rising

TRIAL_SHARE = 0.4        # of the limit, for all the trials
SAFETY = 0.02            # of the limit, kept back from every projection (assembly, the last fold's writes)
HEADROOM = 0.1           # of the time left, kept free before a shortened member gets epochs back
TIE = 0.01               # values this close rank as equal (one fold's held-out noise is larger): cheaper first


class TimeKeeper:
    """Holds `limit_s` over the fold jobs of one `train_experiments` call (local, in sequence)."""

    def __init__(self, limit_s: float, jobs: list[FoldJob], n_folds: dict[str, int], estimates: dict[str, float],
                 scores: dict[str, float] | None = None, save: Callable[[dict], None] | None = None,
                 say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                 start: float | None = None, fold_estimates: dict[str, float] | None = None):
        """`estimates`: init's seconds for each member's folds; `fold_estimates`: for a head, one later fold
        (without the features its first fold extracts); `scores`: the held-out macro-F1 of fold 0 for members
        whose fold 0 finished earlier (they need no trial); `start`: when the limit began (`clock`'s time)."""
        self.clock = clock
        self.limit, self.start = float(limit_s), clock() if start is None else start
        self.fold_estimates = fold_estimates or {}
        self.say, self.save = say, save or (lambda record: None)
        self.decisions: list[str] = []
        self.members: dict[str, Member] = {}
        for job in jobs:
            m = self.members.get(job.name)
            if m is None:
                epochs = job.cfg.epochs if get_kind(job.cfg.kind).trains_epochs else 0
                m = self.members[job.name] = Member(job.name, len(self.members), epochs, epochs, [],
                                                    n_folds[job.name], estimates.get(job.name))
                m.trial_epochs = max(1, math.ceil(TRIAL_FRACTION * epochs)) if epochs else 0
            m.folds.append(job.fold)
        for name, score in (scores or {}).items():
            if name in self.members and 0 not in self.members[name].folds:
                self.members[name].score = score
        self.jobs = {(j.name, j.fold): j for j in jobs}

    # ------------------------------------------------------------------ time
    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.limit * (1 - SAFETY) - self.elapsed()

    def _ratio(self) -> float:
        """Measured over estimated seconds per epoch (the machine's load and the probe's error), median."""
        ratios = sorted(mean_recent(m.epoch_seconds) / e for m in self.members.values()
                        if m.epoch_seconds and (e := self._estimated_epoch(m)))
        return ratios[len(ratios) // 2] if ratios else 1.0

    def _estimated_epoch(self, m: Member) -> float | None:
        if m.estimate_s is None or not m.trains_epochs:
            return None
        return 0.9 * m.estimate_s / max(m.n_folds * m.config_epochs, 1)  # ~90% of a network's cost is its epochs

    def epoch_s(self, m: Member, slow: bool = False) -> float:
        """Seconds per epoch from the last two timed; `slow`: the slowest of the last four (to give epochs back
        only when even that fits, so that the plan does not swing with the load's ups and downs)."""
        if m.epoch_seconds:
            return max(m.epoch_seconds[-4:]) if slow else mean_recent(m.epoch_seconds)
        est = self._estimated_epoch(m)
        return est * self._ratio() if est else 0.0

    def fixed_s(self, m: Member) -> float:
        """A fold's cost besides its epochs: predicting (networks), or the whole fold (heads)."""
        if m.trains_epochs:
            if m.predict_seconds:
                return max(m.predict_seconds)
            guess = 0.1 * m.estimate_s * self._ratio() / m.n_folds if m.estimate_s else 0.0
            # predicting (forward passes only) costs about an epoch at most: a loaded probe's tenth of the
            # member's estimate, scaled by another member's slowdown, had left out the best network
            return min(guess, self.epoch_s(m)) if m.epoch_seconds else guess
        if len(m.fold_seconds) >= 2:
            return m.fold_seconds[-1]
        # one fold measured may have extracted the features for every head on the backbone: the heads' folds
        # cost about the same, so the median over all heads' measured folds (init's estimate before any)
        heads = sorted(s for o in self.members.values() if not o.trains_epochs for s in o.fold_seconds)
        if heads:
            return heads[len(heads) // 2]
        later = self.fold_estimates.get(m.name)
        return later * max(self._ratio(), 1.0) if later is not None else (m.estimate_s or 0.0) / m.n_folds

    def cost(self, m: Member, epochs: int | None = None, folds: list[int] | None = None, slow: bool = False) -> float:
        """Projected seconds for `folds` (default: its pending ones) at `epochs` per fold (`slow`: `epoch_s`)."""
        epochs = m.epochs if epochs is None else epochs
        folds = m.folds if folds is None else folds
        per_epoch, fixed = self.epoch_s(m, slow), self.fixed_s(m)
        return sum(max(epochs - m.done_epochs.get(f, 0), 0) * per_epoch + fixed for f in folds)

    # ------------------------------------------------------------------ decisions
    def _decide(self, line: str) -> None:
        self.decisions.append(f"{format_duration(self.elapsed())}: {line}")
        self.say(f"time limit: {line}")
        self.save(self.record())

    def note(self, line: str) -> None:
        """A line of the run's own among the decisions (e.g. the threads its folds train with)."""
        self._decide(line)

    def order(self) -> list[FoldJob]:
        """The trials (fold-0 jobs), cheapest first."""
        trials = [m for m in self.members.values() if m.awaits_trial]
        trials.sort(key=lambda m: (self.cost(m, m.trial_epochs or None, [0]), m.rank))
        return [self.jobs[(m.name, 0)] for m in trials]

    def admit_trial(self, job: FoldJob) -> bool:
        m = self.members[job.name]
        part = self._part(m)
        tried = any(o.score is not None for o in self.members.values() if o.trains_epochs)
        if m.trains_epochs and tried and self.epoch_s(m) > part:
            m.status = "left out"
            self._decide(f"{m.name} left out before its trial: one epoch of fold 0 needs about "
                         f"{format_duration(self.epoch_s(m))}, its part of the trials' share ({TRIAL_SHARE:.0%} of "
                         f"the limit, in equal parts for the networks not tried yet) is {format_duration(part)}")
            return False
        m.status = "trial"
        return True

    def _part(self, m: Member) -> float:
        """A network's time for its trial: what is left of the trials' share, in equal parts for the networks not
        tried yet (itself included), so that a slow first trial does not leave the others untried (the first
        rung of successive halving: every candidate the same budget)."""
        waiting = [o for o in self.members.values() if o.trains_epochs and o.score is None and o.awaits_trial
                   and o.status in ("planned", "trial")]
        return max(self._share_left(), 0.0) / max(len(waiting), 1)

    def _share_left(self) -> float:
        """What the networks' trials may still use: a head's trial is a whole fold, work the member keeps, so
        only the networks' partial folds count as exploration."""
        return TRIAL_SHARE * self.limit - sum(m.spent for m in self.members.values() if m.trains_epochs)

    def trial_gate(self, job: FoldJob):
        """Pauses the trial after its `trial_epochs`, or sooner when the next epoch would overrun its part."""
        m = self.members[job.name]
        t0, part = self.clock(), self._part(m)

        def gate(done: int, epochs: int, seconds: float | None, score: float) -> int:
            if seconds is None:  # resuming a trial (after an interruption): it goes on to its pause
                return epochs
            self._epoch_done(m, job.fold, done, seconds)
            m.curve.append(float(score))
            if done >= m.trial_epochs or self.clock() - t0 + self.epoch_s(m) > part:
                raise FoldPaused(done, score)
            return epochs
        return gate

    def trial_done(self, job: FoldJob, score: float, seconds: float, predict_s: float | None = None) -> None:
        m = self.members[job.name]
        m.spent += seconds
        m.score = score
        if m.trains_epochs:
            m.trial_epochs = m.done_epochs.get(0, m.trial_epochs)
            what = f"{m.trial_epochs} of {m.config_epochs} epochs on fold 0"
        else:
            self._fold_finished(m, job.fold, seconds, predict_s)
            what = "fold 0"
        projected = f" (rising: about {m.value:.3f} at {m.config_epochs})" if rising(m.value, score) else ""
        self._decide(f"{m.name} trial: {what} in {format_duration(seconds)}, held-out macro-F1 {score:.3f}{projected}")

    def by_value(self, members) -> list[Member]:
        """The most valuable first: by `Member.value`, in tiers of values within `TIE` of the tier's best; within a
        tier the cheapest to finish at its config's epochs first, then init's order."""
        tiers: list[list[Member]] = []
        for m in sorted(members, key=lambda m: -m.value):
            if tiers and tiers[-1][0].value - m.value <= TIE:
                tiers[-1].append(m)
            else:
                tiers.append([m])
        return [m for tier in tiers
                for m in sorted(tier, key=lambda m: (self.cost(m, m.config_epochs if m.trains_epochs else None),
                                                     m.rank))]

    def allocate(self) -> list[FoldJob]:
        """After the trials: which members go on, at how many epochs, in what order (see the module doc)."""
        left = self.left()
        alive = [m for m in self.members.values() if m.status != "left out" and m.folds]
        heads = self.by_value(m for m in alive if not m.trains_epochs)
        nets = self.by_value(m for m in alive if m.trains_epochs)
        chosen: list[Member] = []
        for m in heads + nets:
            # the best network may go below its floor, down to its trial's epochs (a short network beats none);
            # when its value is above every member going on, down to one epoch per later fold, rather than leave
            # the time unused (fold 0 keeps the epochs its trial trained)
            best = m.value > max((o.value for o in chosen), default=0) + TIE
            lowest = m.floor if any(o.trains_epochs for o in chosen) else 1 if best else max(m.trial_epochs, 1)
            options = range(m.config_epochs, lowest - 1, -1) if m.trains_epochs else [0]
            fit = next((e for e in options if self.cost(m, e) <= left), None)
            if fit is None:
                m.status = "left out"
                self._decide(f"{m.name} left out after its trial (held-out macro-F1 {m.score or 0:.3f}): its "
                             f"other folds need {format_duration(self.cost(m, m.floor))} at "
                             f"{m.floor if m.trains_epochs else 'its'} epochs, {format_duration(max(left, 0))} "
                             f"is left after the members that scored higher")
                continue
            if m.trains_epochs and fit < m.epochs:
                self._decide(f"{m.name} goes on at {fit} epochs instead of {m.epochs} (trial macro-F1 "
                             f"{m.score or 0:.3f}): its folds then need {format_duration(self.cost(m, fit))} "
                             f"of the {format_duration(max(left, 0))} left")
            m.epochs = fit if m.trains_epochs else 0
            m.lowest = lowest if m.trains_epochs else None
            m.status = "going on"
            left -= self.cost(m)
            chosen.append(m)
        if not chosen and alive:  # nothing fits: the cheapest member is finished anyway, so the blend has one
            m = min(alive, key=lambda m: self.cost(m, m.trial_epochs if m.trains_epochs else None))
            m.status, m.epochs = "going on", m.trial_epochs if m.trains_epochs else 0
            self._decide(f"{m.name} goes on although nothing fits the {format_duration(max(left, 0))} left: "
                         f"the cheapest member to finish ({format_duration(self.cost(m))}), so that the blend has "
                         f"one; the run ends over the limit")
            chosen.append(m)
        return [self.jobs[(m.name, f)] for m in chosen for f in m.folds]

    def admit(self, job: FoldJob) -> bool:
        """Before a fold: still going on, once the work left is re-projected (shortened when it overruns,
        lengthened again towards the config's epochs when it leaves room)."""
        self.replan(current=None)
        self._lengthen()
        return self.members[job.name].status == "going on"

    def _lengthen(self) -> None:
        """Members shortened earlier get epochs back, the most valuable first, while the work left, projected from
        the slowest recent epochs, stays within `1 - HEADROOM` of the time left (an overestimate earlier, or load
        that went away); only by at least two epochs (or a tenth of the config's) or up to the config's, so that
        the plan does not swing back and forth."""
        going = [m for m in self.members.values() if m.status == "going on" and m.trains_epochs]
        for m in self.by_value(going):
            before = m.epochs
            while m.epochs < m.config_epochs:
                m.epochs += 1
                if sum(self.cost(o, slow=True) for o in going) > (1 - HEADROOM) * self.left():
                    m.epochs -= 1
                    break
            if m.epochs < min(m.config_epochs, before + max(2, math.ceil(0.1 * m.config_epochs))):
                m.epochs = before  # a step this small would only swing back and forth with the next epoch's timing
            if m.epochs > before:
                self._decide(f"{m.name}: {m.epochs} epochs per fold instead of {before} from here on: the work left "
                             f"fits the {format_duration(max(self.left(), 0))} left with room")

    def replan(self, current: tuple[Member, int, int] | None) -> int | None:
        """Fit the work left into the time left: later members shortened to their floor, then the running one,
        then members left out (those without finished folds first, lowest value first), then the running
        fold cut below its floor; returns the epochs the running fold (`current` = member, fold, epochs done)
        may have."""
        going = self.by_value(m for m in self.members.values() if m.status == "going on")[::-1]  # least valuable first

        def work() -> float:
            total = 0.0
            for m in going:
                if m.status == "going on":
                    running = current is not None and m is current[0]
                    total += self.cost(m, folds=[f for f in m.folds if not (running and f == current[1])])
            if current is not None:
                m, _, done = current
                total += (max(m.epochs - done, 0)) * self.epoch_s(m) + self.fixed_s(m)
            return total

        if work() <= self.left():
            return None if current is None else current[0].epochs
        for m in going:  # shorten later members' folds towards their floor (the best network's: its lowest)
            if m.trains_epochs and (current is None or m is not current[0]) and m.epochs > m.bound:
                before = m.epochs
                while m.epochs > m.bound and work() > self.left():
                    m.epochs -= 1
                self._decide(f"{m.name}: {m.epochs} epochs per fold instead of {before}, projected from the "
                             f"epochs just timed ({format_duration(self.epoch_s(m))} each)")
                if work() <= self.left():
                    return None if current is None else current[0].epochs
        if current is not None:  # the running member down to its floor, before anyone's finished folds are lost
            m, _, done = current
            while m.epochs > max(m.bound, done + 1) and work() > self.left():
                m.epochs -= 1
            if work() <= self.left():
                return m.epochs
        # then leave out members, those without finished folds first, least valuable first (never the last)
        for m in sorted(going, key=lambda m: bool(m.fold_seconds)):
            started = current is not None and m is current[0]
            last = sum(o.status in ("going on", "finished") for o in self.members.values()) <= 1
            if not started and not last and work() > self.left():
                m.status = "left out"
                self._decide(f"{m.name} left out: the work left ({format_duration(work() + self.cost(m))}) "
                             f"overruns the {format_duration(max(self.left(), 0))} left; its finished folds are "
                             f"kept for a later `foldblend train`")
        if current is None:
            return None
        m, fold, done = current  # last: the running fold itself, and the member's later folds
        while m.epochs > done + 1 and work() > self.left():
            m.epochs -= 1
        return m.epochs

    def gate(self, job: FoldJob):
        m = self.members[job.name]

        def gate(done: int, epochs: int, seconds: float | None, score: float) -> int:
            if seconds is None:  # resuming (a trial that goes on): the epochs the plan gives each fold now
                return min(epochs, m.epochs)
            self._epoch_done(m, job.fold, done, seconds)
            before = m.epochs
            allowed = self.replan((m, job.fold, done))
            if allowed is not None and allowed < before:
                self._decide(f"{m.name}: {allowed} epochs per fold instead of {before} from fold {job.fold} on: the "
                             f"last epoch took {format_duration(seconds)} and the work left would overrun the limit")
            return min(epochs, m.epochs)
        return gate

    def fold_done(self, job: FoldJob, seconds: float, predict_s: float | None) -> None:
        m = self.members[job.name]
        m.spent += seconds
        self._fold_finished(m, job.fold, seconds, predict_s)
        if not m.folds:
            m.status = "finished"
            self.save(self.record())

    @staticmethod
    def _epoch_done(m: Member, fold: int, done: int, seconds: float) -> None:
        m.epoch_seconds.append(seconds)
        m.done_epochs[fold] = done

    def _fold_finished(self, m: Member, fold: int, seconds: float, predict_s: float | None) -> None:
        if fold in m.folds:
            m.folds.remove(fold)
        m.done_epochs.pop(fold, None)
        m.fold_seconds.append(seconds)
        if predict_s is not None:
            m.predict_seconds.append(predict_s)

    def record(self) -> dict:
        return {"limit_s": round(self.limit, 1), "spent_s": round(self.elapsed(), 1),
                "trial_fraction": TRIAL_FRACTION, "trial_share": TRIAL_SHARE,
                "members": {m.name: {"status": m.status, "trial_score": None if m.score is None else round(m.score, 4),
                                     "value": None if m.score is None else round(m.value, 6),
                                     "trial_epochs": m.trial_epochs or None, "epochs": m.epochs or None,
                                     "config_epochs": m.config_epochs or None,
                                     "planned_s": None if m.estimate_s is None else round(m.estimate_s, 1),
                                     "spent_s": round(m.spent, 1)} for m in self.members.values()},
                "decisions": list(self.decisions)}

