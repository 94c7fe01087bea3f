"""What the init probe hands a member kind to time, and what the kind gives back (`MemberKind.time_fold`)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

PROBE_BATCHES = 2   # training batches per timed round, after one untimed warm-up batch
PROBE_SECONDS = 2.0  # a network's training is timed in rounds until this much is timed ...
PROBE_ROUNDS = (3, 8)  # ... at least 3 rounds and at most 8; its cost is the median round's per image


@dataclass
class Timing:
    """Seconds per image on this machine (one view for inference), and a one-off setup per model."""

    train_per_image: float = 0.0    # one training step's share: augmentation, forward, backward, update
    infer_per_image: float = 0.0    # one forward pass under one view (a backbone's, for a head)
    head_fit_per_image: float = 0.0  # an embedding head's fit, per training image
    setup: float = 0.0              # building the model and loading its weights
    decode_per_image: float = 0.0   # reading and resizing one image file (the decode-once cache)

    def to_dict(self) -> dict:
        return {k: float(f"{v:.4g}") for k, v in asdict(self).items()}


@dataclass
class ProbeSample:
    """Real train images, decoded and resized to the candidate's size, and what the run will see."""

    images: np.ndarray   # (n, S, S, 3) uint8, at least batch_size * (PROBE_BATCHES + 1) of them
    labels: np.ndarray   # (n,) random class indices
    n_classes: int
    fold_train: int      # images a fold trains on
    device: object       # torch.device


def median_of_rounds(timed_round, seconds: float = PROBE_SECONDS) -> float:
    """The median of `timed_round(i)`'s seconds per image over rounds run until `seconds` were spent
    (within PROBE_ROUNDS). One round of two batches is at the mercy of whatever else the machine does
    for that second; measured on the 2-core machine, single-round estimates of a whole run were off by
    -27% to +29% while the runs themselves agreed within 10% per epoch."""
    per_image, start = [], time.perf_counter()
    while len(per_image) < PROBE_ROUNDS[1] and (len(per_image) < PROBE_ROUNDS[0]
                                                 or time.perf_counter() - start < seconds):
        per_image.append(timed_round(len(per_image) + 1))
    return float(np.median(per_image))
