"""Asked after every epoch: how many epochs the fold may have in all (a time limit held while training).

A runner that holds a time limit (`running.budget.TimeKeeper`) sets a gate for the fold it runs
(`epoch_gate(gate)`, a context); a kind that trains epochs asks it after each finished epoch, once that
epoch's `last.pt` is written, with what the epoch cost. The gate answers with the fold's epochs in all,
never more than the config's: fewer means the schedule is compressed to end there (the cosine reaches
its floor at the new last epoch), the same means go on. It may instead raise `FoldPaused`: the fold
stops after this epoch without predicting (a trial on fold 0 that the runner scores before deciding
whether the member goes on); its `last.pt` resumes it later with no work lost. A fold that resumes asks
once more before it trains on, with `seconds=None` (no epoch just finished): an answer at or below the
epochs done means it trains no more and predicts (a member that went on at fewer epochs than its trial had).

Outside a gate (the default) a fold trains the config's epochs: nothing here changes what a fold
learns unless a runner asks for it. The epochs a fold ran are in its `log.csv` and `done.json`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Protocol


class FoldPaused(Exception):
    """The gate stopped the fold after an epoch; `last.pt` holds it, a later run resumes it."""

    def __init__(self, epoch: int, score: float):
        super().__init__(f"paused after epoch {epoch}")
        self.epoch, self.score = epoch, score


class EpochGate(Protocol):
    def __call__(self, done: int, epochs: int, seconds: float | None, score: float) -> int:
        """`done` epochs finished of `epochs` allowed so far, the last one took `seconds` (training and
        validation; None: asked on resuming, before training on) and scored `score` (held-out macro-F1):
        the epochs allowed from now on (<= epochs; below `done` only when asked on resuming), or raise
        FoldPaused."""
        ...


_GATE: contextvars.ContextVar[EpochGate | None] = contextvars.ContextVar("epoch_gate", default=None)


def current_gate() -> EpochGate | None:
    return _GATE.get()


@contextlib.contextmanager
def epoch_gate(gate: EpochGate | None):
    """`gate` answers for the folds trained inside the block."""
    token = _GATE.set(gate)
    try:
        yield
    finally:
        _GATE.reset(token)
