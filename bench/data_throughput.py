"""Data throughput: is decoding the bottleneck, and does the decode-once cache remove it?

Generates N synthetic JPEG/PNG images of mixed sizes in a temporary folder and prints images/s for
  (a) a plain loop: read bytes, cv2.imdecode, resize (what a notebook does every epoch),
  (b) foldblend.data.cache.cached_images, cold (first build: parallel decode into a .npy),
  (c) cached_images, warm (memmap open + iterating batches normalised into float tensors),
with ratios against (a), and the ratio of data time to one training step of a tiny CNN on CPU.

    PYTHONPATH=src python bench/data_throughput.py            # defaults run in < 1 minute on 2 cores
    PYTHONPATH=src python bench/data_throughput.py --n 2000 --max-side 1024
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from foldblend.data.cache import cached_images

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def make_images(folder: Path, n: int, min_side: int, max_side: int, seed: int) -> list[Path]:
    """Photo-like images (smooth colour field + noise) of random sizes; ~70% JPEG, ~30% PNG."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        low = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (h, w, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        if rng.random() < 0.7:
            path, params = folder / f"{i:05d}.jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]
        else:
            path, params = folder / f"{i:05d}.png", [cv2.IMWRITE_PNG_COMPRESSION, 3]
        ok, buf = cv2.imencode(path.suffix, img, params)
        path.write_bytes(buf.tobytes())
        paths.append(path)
    return paths


def plain_loop(paths: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        bgr = cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        out[i] = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
    return out


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (memmap slice) -> normalised float NCHW: the per-batch work a loader does on the cache."""
    x = torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2).float()  # copy: the memmap is read-only
    return (x - MEAN) / STD


def iterate_batches(images: np.ndarray, batch: int) -> int:
    seen = 0
    for i in range(0, len(images), batch):
        seen += len(to_tensor(images[i:i + batch]))
    return seen


def tiny_cnn(n_classes: int = 10) -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, n_classes))


def step_time(batch: int, size: int, steps: int) -> float:
    """Seconds per forward + backward + SGD step of the tiny CNN on CPU."""
    torch.manual_seed(0)
    model, loss_fn = tiny_cnn(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="number of synthetic images")
    ap.add_argument("--min-side", type=int, default=160)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--size", type=int, default=64, help="cache / model input side in pixels")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode threads for the cache (default: library's)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="foldblend_bench_") as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        t = time.perf_counter()
        paths = make_images(tmp / "img", args.n, args.min_side, args.max_side, args.seed)
        n_jpg = sum(p.suffix == ".jpg" for p in paths)
        print(f"generated {args.n} images ({n_jpg} JPEG, {args.n - n_jpg} PNG, "
              f"sides {args.min_side}-{args.max_side} px) "
              f"in {time.perf_counter() - t:.1f} s; target {args.size} px, torch threads {torch.get_num_threads()}")

        t = time.perf_counter()
        plain_loop(paths, args.size)
        plain = args.n / (time.perf_counter() - t)

        t = time.perf_counter()
        cached_images(paths, args.size, tmp / "cache", workers=args.workers, progress=False)
        cold = args.n / (time.perf_counter() - t)

        t = time.perf_counter()
        images, ok = cached_images(paths, args.size, tmp / "cache", workers=args.workers, progress=False)
        open_s = time.perf_counter() - t
        seen = iterate_batches(images, args.batch)
        warm_s = time.perf_counter() - t
        warm = seen / warm_s
        assert ok.all() and seen == args.n

        step = step_time(args.batch, args.size, args.steps)
        data_plain = args.batch / plain + to_tensor_time(images, args.batch)
        data_warm = args.batch / warm

    print(f"(a) plain loop (imdecode + resize)  {plain:10.0f} img/s   1.00x")
    print(f"(b) cached_images cold (build)      {cold:10.0f} img/s   {cold / plain:.2f}x")
    print(f"(c) cached_images warm (open+iter)  {warm:10.0f} img/s   {warm / plain:.2f}x   "
          f"(open {open_s * 1e3:.1f} ms)")
    print(f"tiny CNN step (batch {args.batch}, {args.size} px, fwd+bwd, CPU): {step * 1e3:.1f} ms")
    print(f"data time / step time per batch: plain {data_plain / step:.2f}, cache warm {data_warm / step:.3f}")


def to_tensor_time(images: np.ndarray, batch: int, repeats: int = 5) -> float:
    """Seconds to normalise one batch (the plain loop pays this too, on top of decoding)."""
    b = np.ascontiguousarray(images[:batch])
    t = time.perf_counter()
    for _ in range(repeats):
        to_tensor(b)
    return (time.perf_counter() - t) / repeats


if __name__ == "__main__":
    main()
