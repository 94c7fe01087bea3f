"""`foldblend serve`: the web app (`serve.app`) on this machine, with its limits.
"""
from __future__ import annotations

import argparse

from foldblend.serve.app import serve
from foldblend.serve.uploads import UploadLimits


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exp", default="blend", help="`blend` (default), an experiment under models/, a bundle "
                        "folder from `foldblend export`, or a checkpoint file / folder of checkpoints")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1 (this machine only; default) or 0.0.0.0 "
                        "(everyone on the network)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=5, help="classes shown per image at first (a slider changes it)")
    parser.add_argument("--max-upload-mb", type=float, default=200,
                        help="largest file accepted, and most a zip may unpack to (MB)")
    parser.add_argument("--max-images", type=int, default=1000, help="most images classified in one request")
    parser.add_argument("--max-megapixels", type=float, default=200,
                        help="most pixels the images of one request may declare in all (checked from each "
                        "header before decoding; decoding costs about 10-20 bytes a pixel at its peak)")


def run(args: argparse.Namespace, project) -> None:
    if args.max_upload_mb <= 0 or args.max_images < 1 or args.top_k < 1 or args.max_megapixels <= 0:
        raise ValueError("--max-upload-mb, --max-images, --max-megapixels and --top-k must be positive")
    serve(project, args.exp, args.host, args.port, args.device, args.batch_size,
          UploadLimits(int(args.max_upload_mb * 2**20), args.max_images, int(args.max_megapixels * 1e6)), args.top_k)
