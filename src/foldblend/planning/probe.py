"""The timed probe: what one image costs each candidate on this machine, measured on the real data.

A few batches of real train images (decoded and resized as the cache does) go to each candidate's kind,
which times what its folds will do (`MemberKind.time_fold`: a network's real training step and
inference; an embedding head's frozen backbone forward pass and one head fit). Seconds, not minutes:
the budget scales these per-image costs to the whole run. Numbers are what this machine gives now; on
a machine shared with other jobs they move with the load.
"""
from __future__ import annotations

import os
import time

import numpy as np
from tqdm.auto import tqdm

from foldblend.config import config_from_dict
from foldblend.cpu import BUSY, cores, others_cpu
from foldblend.data.cache import resize_square
from foldblend.data.read import ImageReadError, load_rgb
from foldblend.members.infer import resolve_device
from foldblend.members.registry import get_kind
from foldblend.members.timing import PROBE_BATCHES, PROBE_ROUNDS, ProbeSample, Timing, median_of_rounds
from foldblend.planning.presets import Candidate
from foldblend.planning.profile import DataProfile, Hardware

__all__ = ["PROBE_BATCHES", "PROBE_ROUNDS", "PROBE_PASSES", "Timing", "load_warning", "machine_load", "probe",
           "sample_images"]

PROBE_PASSES = 2     # a kind timed again (`MemberKind.retime`) runs this many passes; the fastest counts
_median_of_rounds = median_of_rounds


def machine_load(seconds: float = 1.0) -> dict:
    """What else the machine is doing now: other processes' share of all CPU cores over `seconds` (this
    process sleeps meanwhile, so the share is theirs), and the 1-minute load average."""
    busy = others_cpu(seconds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"others_cpu": round(busy, 3), "load_average": None if load is None else round(load, 2),
            "cores": cores()}


def load_warning(load: dict) -> str:
    if load["others_cpu"] <= BUSY:
        return ""
    if load.get("threads") is not None:  # under a time limit: timed, and trained, on the cores left free
        return (f"other processes use {load['others_cpu']:.0%} of the {load['cores']} CPU cores (load average "
                f"{load['load_average']}): the probe timed each network at {load['threads']} torch thread(s), the "
                f"cores they leave free, as the train stage trains each fold while they run (the timings of "
                f"every core, shared with them, move 3-23x); it re-plans from what each epoch takes")
    return (f"other processes use {load['others_cpu']:.0%} of the {load['cores']} CPU cores (load average "
            f"{load['load_average']}): the probe's timings may be several times a quiet machine's; the train stage "
            f"re-plans from what each epoch takes")


def sample_images(profile: DataProfile, size: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(images uint8 (n, size, size, 3), labels, seconds per decoded image) from real train files."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(profile.train_paths), size=min(n, len(profile.train_paths)), replace=False)
    images, t0 = [], time.perf_counter()
    for i in pick:
        try:
            images.append(resize_square(load_rgb(profile.train_paths[i], draft_size=size), size))
        except ImageReadError:  # folds.csv has only readable files; a file changed since: skip it
            continue
    seconds = (time.perf_counter() - t0) / max(len(images), 1)
    while len(images) < n:  # fewer images than a few batches: repeat them (the cost is per image)
        images.extend(images[: n - len(images)])
    labels = rng.integers(0, max(profile.n_classes, 2), len(images))
    return np.stack(images), labels, seconds


def probe(cands: list[Candidate], profile: DataProfile, hw: Hardware, progress: bool = True,
          passes: int = PROBE_PASSES) -> dict[str, Timing]:
    """{candidate name: Timing}; each kind may share timings between its candidates (the embedding heads
    on one backbone and size: features are extracted once for all of them), and each size decodes its
    sample once. `passes`: how often a noisy kind is timed (under a time limit one: training re-plans from
    what its own epochs take)."""
    import torch

    device = resolve_device("cuda" if hw.gpu else "cpu")
    samples: dict[int, tuple] = {}
    out: dict[str, Timing] = {}
    shared: dict[str, dict] = {}  # per kind, e.g. a backbone's timing for the heads on it
    bar = tqdm(cands, desc="probe", unit="member", disable=not progress)
    for c in bar:
        bar.set_postfix_str(c.name)
        size, b = c.values["img_size"], c.values.get("batch_size", 64)
        n = b * (PROBE_BATCHES + 1)
        if size not in samples or len(samples[size][0]) < n:
            samples[size] = sample_images(profile, size, n)
        images, labels, decode_s = samples[size]
        torch.manual_seed(0)
        kind = get_kind(c.kind, f"candidate {c.name}")
        timing = kind.time_fold(_config(c, device), ProbeSample(images, labels, profile.n_classes, profile.fold_train,
                                                                device), shared.setdefault(kind.name, {}))
        timing.decode_per_image = decode_s
        out[c.name] = timing
    # A second pass over the kinds whose timings are noisy (networks), seconds apart from the first: a burst of
    # other work on the machine slows whichever candidate is being timed (once, on the quiet 2-core machine, a
    # fine-tune's probe came out at twice its real cost and its plan dropped two members), and it seldom lasts
    # across both.
    again_cands = [c for c in cands if get_kind(c.kind).retime]
    for _ in range(passes - 1):
        for c in tqdm(again_cands, desc="probe (again)", unit="member", disable=not progress):
            images, labels, _ = samples[c.values["img_size"]]
            torch.manual_seed(0)
            kind = get_kind(c.kind)
            again = kind.time_fold(_config(c, device), ProbeSample(images, labels, profile.n_classes,
                                                                   profile.fold_train, device), {})
            first = out[c.name]
            first.train_per_image = min(first.train_per_image, again.train_per_image)
            first.infer_per_image = min(first.infer_per_image, again.infer_per_image)
    return out


def _config(c: Candidate, device):
    return config_from_dict({**c.values, "name": c.name, "device": str(device)}, f"candidate {c.name}")
