"""The ``fuse3d`` command line."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_write_tiny_model(args) -> int:
    from .testing import TINY_MODEL_NAME, write_tiny_model

    path = write_tiny_model(args.path, seed=args.seed)
    print(f"wrote {TINY_MODEL_NAME} (random weights, outputs are meaningless) to {path}")
    return 0


def _cmd_info(args) -> int:
    from .trellis.pipeline import load_pipeline

    pipe = load_pipeline(args.model, dinov2=args.dinov2, progress=False)
    print(f"model: {pipe.model_name} ({pipe.source})")
    for name, module in pipe.named_children():
        n = sum(p.numel() for p in module.parameters())
        print(f"  {name:18s} {type(module).__name__:28s} {n / 1e6:9.2f} M parameters")
    print(f"  structure sampler: {pipe.ss_sampler_params}")
    print(f"  latent sampler:    {pipe.slat_sampler_params}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fuse3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("write-tiny-model", help="write the tiny random-weight model in TRELLIS format")
    p.add_argument("path", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_write_tiny_model)

    p = sub.add_parser("info", help="list the networks of a TRELLIS-format model folder or repo")
    p.add_argument("model", help="model folder or Hugging Face repo id")
    p.add_argument("--dinov2", default=None, help="DINOv2 weights (file, folder or HF repo id)")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
