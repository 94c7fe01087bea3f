"""The CPU's other users: how much of it other processes take, and how many torch threads a fold gets then.

torch splits each kernel over its intra-op threads and waits for all of them: on a machine shared with
other work, a thread whose core another process holds stalls the rest at every kernel. Measured on the
2-core machine, `foldblend init`'s probe (ms per training image) quiet at 2 threads and beside a 2-thread
torch matmul loop at 2 and at 1 thread: `cnn_small` 32 px 2.2 / 50.4 / 4.3, `resnet10t` 64 px
8.7 / 27.5 / 9.3, the Lite0 fine-tune 64 px 8.0 / 84.8 / 16.4. With the cores others hold left to them,
a network trains 3-12x faster beside them, and its timing stays within about 2x of a quiet machine's,
where with every thread it moved 3-23x.

A fold's weights depend on its thread count (`running.fold`), so only a run that already depends on the
machine's speed -- one under a time limit -- lowers the threads to the load (`threads_for_load`).
"""
from __future__ import annotations

import math
import os

BUSY = 0.25         # other processes' share of the CPU above which timings taken now are called unreliable
SAMPLE_S = 0.3      # how long the share is measured before a fold (this process sleeps meanwhile)


def cores() -> int:
    return os.cpu_count() or 1


def others_cpu(seconds: float = SAMPLE_S) -> float:
    """Other processes' share of all CPU cores over `seconds`, 0-1: the whole machine's, less this process's
    own (it sleeps meanwhile; torch's threads may still be winding down)."""
    import psutil

    me = psutil.Process()
    before = me.cpu_times()
    total = psutil.cpu_percent(interval=seconds) / 100
    after = me.cpu_times()
    mine = (after.user - before.user + after.system - before.system) / (seconds * cores())
    return min(max(total - mine, 0.0), 1.0)


def threads_for_load(threads: int, others: float, n_cores: int | None = None) -> int:
    """`threads`, lowered to the cores other processes leave free (at least one): on 2 cores, 2 threads up
    to a quarter of the CPU taken by others, 1 above."""
    n_cores = n_cores or cores()
    free = math.floor(n_cores * (1.0 - min(max(others, 0.0), 1.0)) + 0.5)
    return max(1, min(int(threads), free))
