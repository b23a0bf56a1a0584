"""The ``cbir`` command: the options and outputs every data-and-model sub-command shares (DESIGN.md's contract)."""
from __future__ import annotations

import argparse

from ..features.specs import OFFLINE_MODEL


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every data-and-model command shares (the DESIGN.md contract)."""
    p.add_argument("--dataset", default="demo",
                   help="a name from `cbir datasets list` (demo, digits, corel1k, ...), folder:PATH, qg:PATH or "
                        "csv:PATH (default: demo)")
    p.add_argument("--model", default=OFFLINE_MODEL,
                   help=f"efficientnet_lite0, resnet18, resnet50, clip:ARCH:PRETRAINED or finetuned:PATH "
                        f"(from `cbir finetune`; default: {OFFLINE_MODEL})")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice: splits, sampling, initialisation (default: 0)")
    add_network_flags(p)


def add_network_flags(p: argparse.ArgumentParser) -> None:
    """Where and how images are embedded: feature cache, device, batch size, decoding threads, progress bars."""
    p.add_argument("--cache", default=None, help="feature cache folder (default: $CBIR_CACHE, else ~/.cache/cbir_kit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the network runs (default: auto = CUDA, else Apple MPS, else CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: measured per model, see cbir bench extract)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding threads (default: min(4, cores))")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def write_outputs(args, payload: dict, report) -> None:
    """The ``--json PATH`` and ``--report DIR`` outputs every command writes the same way.

    ``payload`` is written atomically as JSON; ``report()`` writes the report into ``args.report`` and
    returns the file it wrote.
    """
    from .._io import write_json

    if args.json:
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    if getattr(args, "report", None):
        print(f"wrote {report()}")


def runtime_from_args(args):
    """The :class:`cbir_kit.runtime.Runtime` of a command's shared options (built once per run)."""
    from ..runtime import Runtime

    return Runtime(root=args.root, cache_dir=args.cache, device=args.device, batch_size=args.batch_size,
                   num_workers=args.workers, progress=not args.no_progress, seed=args.seed,
                   cluster=getattr(args, "cluster", "none"))


def add_cluster_flag(p: argparse.ArgumentParser, what: str = "feature extraction") -> None:
    """``--cluster SPEC`` (DESIGN.md's contract; :mod:`cbir_kit.cluster`)."""
    p.add_argument("--cluster", default="none", metavar="SPEC",
                   help=f"where to run {what}: none (this process, default), local:N (N worker processes on this "
                        "machine) or a Dask scheduler address tcp://HOST:8786; needs pip install -e \".[cluster]\"")
