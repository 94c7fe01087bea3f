"""Speed and memory of greedy selection and bias tuning at competition scale, against a plain baseline.

20 members x 20,000 OOF images x 42 classes (the Simpsons task's size), members = noisy views of one
signal, 5 folds. Times are ratios against one plain mean-of-probabilities + one macro-F1 evaluation
measured in the same run, so they compare across machines.

    PYTHONPATH=src python bench/blend_speed.py [--members 20 --images 20000 --classes 42 --rounds 100]
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
from sklearn.metrics import f1_score

from foldblend.ensemble.methods import greedy_select, mean_probs, safe_log, tune_biases
from foldblend.metrics import macro_f1, softmax


def synthetic_members(n_members: int, n_images: int, n_classes: int, seed: int = 0):
    """Labels, folds and (K, N, C) float32 probabilities: signal plus member-specific noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_images)
    folds = rng.permutation(np.arange(n_images) % 5)
    signal = (2.5 * np.eye(n_classes, dtype=np.float32)[labels]
              + rng.normal(0, 1, (n_images, n_classes)).astype(np.float32))
    probs = np.stack([
        softmax(signal + rng.normal(0, 1.0 + 0.05 * k, signal.shape).astype(np.float32)).astype(np.float32)
        for k in range(n_members)])
    return labels, folds, probs


def measure(fn):
    """(result, seconds, peak traced bytes) of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    labels, _, probs = synthetic_members(args.members, args.images, args.classes)
    c = args.classes
    print(f"{args.members} members x {args.images} images x {c} classes, {args.rounds} greedy rounds")

    def baseline():
        return macro_f1(labels, mean_probs(probs).argmax(axis=1), c)

    plain, base_s, base_peak = measure(baseline)
    _, sk_s, _ = measure(lambda: f1_score(labels, probs[0].argmax(1), labels=list(range(c)), average="macro",
                                          zero_division=0))
    weights, greedy_s, greedy_peak = measure(lambda: greedy_select(probs, labels, "macro_f1", args.rounds))
    blended = safe_log(mean_probs(probs, weights))
    biases, bias_s, bias_peak = measure(lambda: tune_biases(blended, labels, "macro_f1"))
    greedy_f1 = macro_f1(labels, blended.argmax(1), c)
    tuned_f1 = macro_f1(labels, (blended + biases).argmax(1), c)

    print(f"{'step':<34} {'seconds':>8} {'x baseline':>11} {'peak MiB':>9}")
    rows = [("baseline: mean probs + macro-F1", base_s, base_peak),
            ("greedy selection (macro-F1)", greedy_s, greedy_peak),
            ("bias tuning (61 values x 3 passes)", bias_s, bias_peak)]
    for name, seconds, peak in rows:
        print(f"{name:<34} {seconds:8.3f} {seconds / base_s:11.1f} {peak / 2**20:9.1f}")
    print(f"(one sklearn f1_score call: {sk_s:.3f} s; members' probabilities: {probs.nbytes / 2**20:.0f} MiB)")
    print(f"in-sample macro-F1: mean {plain:.4f}, greedy {greedy_f1:.4f}, greedy+bias {tuned_f1:.4f} "
          f"({np.count_nonzero(weights)} members used)")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
