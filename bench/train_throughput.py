"""Training and TTA-inference throughput: foldblend's loop against a bare PyTorch loop, in one run.

foldblend: the real path of `train_fold` for one epoch — `train_loader` over the cached uint8 images,
`to_input`, autocast, GradScaler, AdamW with param groups, the per-update scheduler, EMA off —
via `train.train_one_epoch`. Bare: the same model, batch size and number of steps over pre-normalised
float tensors already in memory (no loader, plain AdamW, no scheduler). Warmup steps are run first and
excluded; the timed steps alternate between the two in rounds, so load changes on a shared machine hit both. \
Inference: `predict.infer` per TTA view against a bare no-grad loop over the same tensors.

    PYTHONPATH=src python bench/train_throughput.py                       # ~1-2 min on 2 CPU cores
    PYTHONPATH=src python bench/train_throughput.py --model resnet18 --img-size 224 --batch-size 128 --device cuda
"""
from __future__ import annotations

import argparse
import copy
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from foldblend.config import config_from_dict
from foldblend.members.cnn.models import Arch, create_model, normalisation
from foldblend.members.cnn.optim import build_fit, epoch_seed
from foldblend.members.cnn.train import train_one_epoch
from foldblend.members.infer import autocast, infer
from foldblend.members.loaders import eval_loader, train_loader


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def bare_train(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, lr: float,
               device: torch.device, amp: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for s in range(steps):
        xb, yb = x[s * batch_size:(s + 1) * batch_size], y[s * batch_size:(s + 1) * batch_size]
        with autocast(device, amp):
            loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def bare_infer(model, x: torch.Tensor, batch_size: int, device: torch.device, amp: str) -> float:
    model.eval()
    sync(device)
    t0 = time.perf_counter()
    for s in range(0, len(x), batch_size):
        with autocast(device, amp):
            model(x[s:s + batch_size]).float().cpu()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    ap.add_argument("--rounds", type=int, default=3, help="timed steps are split into alternating rounds")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--augment", default="none", help="foldblend only (the bare loop has none): none|light|...")
    ap.add_argument("--views", default="identity,hflip")
    ap.add_argument("--num-workers", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    n_classes, bs, steps = 10, args.batch_size, args.steps
    n = bs * max(steps, args.warmup)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, args.img_size, args.img_size, 3), dtype=np.uint8)  # as the cache holds them
    labels = rng.integers(0, n_classes, n)
    cfg = config_from_dict({"name": "bench", "model": args.model, "img_size": args.img_size, "batch_size": bs,
                            "epochs": 1, "augment": args.augment, "amp": args.amp, "device": args.device,
                            "scheduler": "cosine", "num_workers": args.num_workers, "lr": 1e-3})

    torch.manual_seed(0)
    model = create_model(Arch(args.model, n_classes)).to(device)
    bare_model = copy.deepcopy(model)
    mean, std = normalisation(model)
    fit = build_fit(cfg, model, labels, n_classes, steps, device, mean, std)
    m = torch.tensor(mean).view(1, 3, 1, 1) * 255
    s = torch.tensor(std).view(1, 3, 1, 1) * 255
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() - m) / s).contiguous().to(device)
    y = torch.from_numpy(labels).to(device)

    def fold_loader(k: int):
        return train_loader(images, np.arange(k * bs), labels[:k * bs], cfg, n_classes, epoch_seed(0, 0, k),
                            pin_memory=device.type == "cuda")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # untimed warmup of both, then timed rounds that alternate foldblend and bare, so that a change in the
    # machine's load (a shared CPU) hits both alike
    train_one_epoch(fit, fold_loader(args.warmup))
    bare_train(bare_model, x, y, bs, args.warmup, 1e-3, device, args.amp)
    per_round = [steps // args.rounds + (r < steps % args.rounds) for r in range(args.rounds)]
    fb_seconds = bare_seconds = data_seconds = 0.0
    for r, k in enumerate(per_round):
        sync(device)
        stats = train_one_epoch(fit, fold_loader(k))
        sync(device)
        fb_seconds += stats["seconds"]
        data_seconds += stats["data_seconds"]
        bare_seconds += bare_train(bare_model, x, y, bs, k, 1e-3, device, args.amp)
    fb_ips, bare_ips = steps * bs / fb_seconds, steps * bs / bare_seconds

    print(f"model {args.model}  img {args.img_size}px  batch {bs}  steps {steps} (+{args.warmup} warmup)  "
          f"device {device}  amp {args.amp}  augment {args.augment}  threads {torch.get_num_threads()}")
    print(f"train  foldblend {fb_ips:9.1f} img/s  (data {data_seconds / fb_seconds:5.1%} of its time)")
    print(f"train  bare      {bare_ips:9.1f} img/s")
    print(f"train  ratio foldblend/bare {fb_ips / bare_ips:.3f}")

    views = [v for v in args.views.split(",") if v]
    loader = eval_loader(images, np.arange(steps * bs), bs * 2, args.num_workers, pin_memory=device.type == "cuda")
    infer(model, eval_loader(images, np.arange(bs * 2), bs * 2), views, device, mean, std, args.amp)  # warmup
    sync(device)
    t0 = time.perf_counter()
    infer(model, loader, views, device, mean, std, args.amp)
    sync(device)
    fb_view_ips = steps * bs * len(views) / (time.perf_counter() - t0)
    bare_infer(model, x[:bs * 2], bs * 2, device, args.amp)
    bare_view_ips = steps * bs / bare_infer(model, x[:steps * bs], bs * 2, device, args.amp)
    print(f"infer  foldblend {fb_view_ips:9.1f} img/s per view ({len(views)} views: {', '.join(views)})")
    print(f"infer  bare      {bare_view_ips:9.1f} img/s per view")
    print(f"infer  ratio foldblend/bare {fb_view_ips / bare_view_ips:.3f}")
    mem = f"peak RSS {peak_rss_mb():.0f} MB"
    if device.type == "cuda":
        mem += f"  peak CUDA allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
    print(mem)


if __name__ == "__main__":
    main()
