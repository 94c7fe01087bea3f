"""The timed probe: what one image costs each candidate on this machine, measured on the real data.

A few batches of real train images (decoded and resized as the cache does), each candidate's real
training step (its model, augmentation, optimizer, mixed precision: `cnn.train.train_one_epoch`) and
its real inference (`infer.infer`); for an embedding head, the frozen backbone's forward pass and one
head fit. Seconds, not minutes: the budget scales these per-image costs to the whole run. Numbers are
what this machine gives now; on a machine shared with other jobs they move with the load.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from foldblend.config import config_from_dict
from foldblend.data.cache import resize_square
from foldblend.data.read import ImageReadError, load_rgb
from foldblend.members.cnn.models import Arch, create_model, normalisation
from foldblend.members.cnn.optim import build_fit
from foldblend.members.cnn.train import train_one_epoch
from foldblend.members.embedding.heads import fit_head
from foldblend.members.features import FeatureSpec, extract, load_backbone
from foldblend.members.infer import infer, resolve_device
from foldblend.members.loaders import eval_loader, train_loader
from foldblend.planning.presets import Candidate
from foldblend.planning.profile import DataProfile, Hardware

PROBE_BATCHES = 2   # training batches per timed round, after one untimed warm-up batch
PROBE_SECONDS = 2.0  # a network's training is timed in rounds until this much is timed ...
PROBE_ROUNDS = (3, 8)  # ... at least 3 rounds and at most 8; its cost is the median round's per image
PROBE_PASSES = 2     # every network is timed in this many passes over the candidates; the fastest pass counts


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


def _median_of_rounds(timed_round, seconds: float = PROBE_SECONDS) -> float:
    """The median of `timed_round(i)`'s seconds per image over rounds run until `seconds` were spent
    (within PROBE_ROUNDS). One round of two batches is at the mercy of whatever else the machine does
    for that second; measured on the 2-core machine, single-round estimates of a whole run were off by
    -27% to +29% while the runs themselves agreed within 10% per epoch."""
    per_image, start = [], time.perf_counter()
    while len(per_image) < PROBE_ROUNDS[1] and (len(per_image) < PROBE_ROUNDS[0]
                                                 or time.perf_counter() - start < seconds):
        per_image.append(timed_round(len(per_image) + 1))
    return float(np.median(per_image))


def _time_network(c: Candidate, images: np.ndarray, labels: np.ndarray, n_classes: int, device) -> Timing:
    import torch


    cfg = config_from_dict({**c.values, "name": c.name, "device": str(device)}, f"candidate {c.name}")
    t0 = time.perf_counter()
    model = create_model(Arch(cfg.model, n_classes, cfg.drop_rate, cfg.head_hidden, cfg.drop_path_rate),
                         cfg.pretrained).to(device)
    mean, std = normalisation(model)
    fit = build_fit(cfg, model, labels, n_classes, PROBE_BATCHES * PROBE_ROUNDS[1] + 1, device, mean, std)
    setup = time.perf_counter() - t0
    b = cfg.batch_size
    train_one_epoch(fit, train_loader(images, np.arange(b), labels[:b], cfg, n_classes, seed=0))  # warm-up
    index = np.arange(b, b * (PROBE_BATCHES + 1))

    def train_round(seed: int) -> float:
        stats = train_one_epoch(fit, train_loader(images, index, labels[index], cfg, n_classes, seed=seed))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return stats["seconds"] / max(stats["images"], 1)

    train_s = _median_of_rounds(train_round)
    eval_index = np.arange(min(len(images), 2 * b))

    def infer_round(_: int) -> float:
        t0 = time.perf_counter()
        infer(fit.model, eval_loader(images, eval_index, 2 * b), ["identity"], device, mean, std, cfg.amp,
              fit.channels_last, n_classes=n_classes)
        return (time.perf_counter() - t0) / len(eval_index)

    infer_s = _median_of_rounds(infer_round, seconds=PROBE_SECONDS / 2)
    return Timing(train_per_image=train_s, infer_per_image=infer_s, setup=setup)


def _time_backbone(c: Candidate, images: np.ndarray, device) -> tuple[float, float, int]:
    """(setup seconds, seconds per image per view, feature dimension) of a frozen backbone."""

    cfg = config_from_dict({**c.values, "name": c.name, "device": str(device)}, f"candidate {c.name}")
    t0 = time.perf_counter()
    backbone, mean, std = load_backbone(FeatureSpec(cfg.model, cfg.pretrained, cfg.img_size))
    setup = time.perf_counter() - t0
    b = cfg.batch_size
    extract(backbone, images[:b], ["identity"], mean, std, device, b, cfg.amp)  # warm-up
    n = min(len(images), 2 * b)
    t0 = time.perf_counter()
    feats = extract(backbone, images[:n], ["identity"], mean, std, device, b, cfg.amp)[0]
    return setup, (time.perf_counter() - t0) / n, int(feats.shape[1])


def _time_head(c: Candidate, dim: int, profile: DataProfile) -> float:
    """Seconds per training image of one head fit. A fit grows with the images it fits on: timed on as
    many random features as a fold has, up to 2,000, and scaled linearly."""
    cfg = config_from_dict({**c.values, "name": c.name}, f"candidate {c.name}")
    n = min(profile.fold_train, 2000)
    x = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    t0 = time.perf_counter()
    fit_head(cfg.embed, x, np.arange(n) % profile.n_classes, profile.n_classes, cfg.class_weight, seed=0)
    return (time.perf_counter() - t0) / n


def probe(cands: list[Candidate], profile: DataProfile, hw: Hardware, progress: bool = True) -> dict[str, Timing]:
    """{candidate name: Timing}; candidates sharing a backbone and size share one embedding timing
    (features are extracted once for all of their heads), and each size decodes its sample once."""
    import torch


    device = resolve_device("cuda" if hw.gpu else "cpu")
    samples: dict[int, tuple] = {}
    out: dict[str, Timing] = {}
    backbones: dict[tuple, tuple] = {}
    bar = tqdm(cands, desc="probe", unit="member", disable=not progress)
    for c in bar:
        bar.set_postfix_str(c.name)
        size, b = c.values["img_size"], c.values.get("batch_size", 64)
        n = b * (PROBE_BATCHES + 1)
        if size not in samples or len(samples[size][0]) < n:
            samples[size] = sample_images(profile, size, n)
        images, labels, decode_s = samples[size]
        torch.manual_seed(0)
        if c.kind == "embedding":
            key = (c.values["model"], str(c.values["pretrained"]), size)
            if key not in backbones:
                backbones[key] = _time_backbone(c, images, device)
            setup, infer_s, dim = backbones[key]
            timing = Timing(infer_per_image=infer_s, head_fit_per_image=_time_head(c, dim, profile), setup=setup)
        else:
            timing = _time_network(c, images, labels, profile.n_classes, device)
        timing.decode_per_image = decode_s
        out[c.name] = timing
    # A second pass over the networks, seconds apart from the first: a burst of other work on the machine
    # slows whichever candidate is being timed (once, on the quiet 2-core machine, a fine-tune's probe
    # came out at twice its real cost and its plan dropped two members), and it seldom lasts across both.
    networks = [c for c in cands if c.kind != "embedding"]
    for _ in range(PROBE_PASSES - 1):
        for c in tqdm(networks, desc="probe (again)", unit="member", disable=not progress):
            images, labels, _ = samples[c.values["img_size"]]
            torch.manual_seed(0)
            again = _time_network(c, images, labels, profile.n_classes, device)
            first = out[c.name]
            first.train_per_image = min(first.train_per_image, again.train_per_image)
            first.infer_per_image = min(first.infer_per_image, again.infer_per_image)
    return out
