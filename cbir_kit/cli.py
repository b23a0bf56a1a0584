"""The ``cbir`` command.  Each sub-command lives in a function ``add_<name>(subparsers)``.

Errors raised on purpose (:class:`cbir_kit.errors.CbirError`) print as one line and exit 2;
notices of adjusted input (:class:`cbir_kit.errors.CbirWarning`) print as one line each, once per run.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .bench_extract import add_bench
from .compare import add_compare
from .datasets.cli import add_datasets
from .errors import CbirError, CbirWarning
from .features import OFFLINE_MODEL
from .grade.cli import add_grade
from .train.command import add_finetune, add_train


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every data-and-model command shares (the DESIGN.md contract)."""
    p.add_argument("--dataset", default="demo",
                   help="a name from `cbir datasets list` (demo, digits, corel1k, ...), folder:PATH, qg:PATH or "
                        "csv:PATH (default: demo)")
    p.add_argument("--model", default=OFFLINE_MODEL,
                   help=f"efficientnet_lite0, resnet18, resnet50, clip:ARCH:PRETRAINED or finetuned:PATH "
                        f"(from `cbir finetune`; default: {OFFLINE_MODEL})")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $CBIR_CACHE, else ~/.cache/cbir_kit)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the network runs (default: auto = CUDA, else Apple MPS, else CPU)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: measured per model, see cbir bench extract)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding threads (default: min(4, cores))")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice: splits, sampling, initialisation (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_evaluate(args) -> int:
    from .evaluate import evaluate

    result = evaluate(dataset=args.dataset, model=args.model, k=args.k, root=args.root, cache_dir=args.cache,
                      device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                      progress=not args.no_progress, seed=args.seed, head=args.head,
                      methods=methods_from_args(args))
    print(result.table())
    if "exact_metrics" in result.config:
        exact = result.config["exact_metrics"]
        print("\nexact Flat on the same features: " + "  ".join(
            f"{name} {exact[name]:.4f}" for name in ("mAP", "P@1", "P@10", "R@10") if name in exact))
    from .report import write_report

    write_outputs(args, result.to_dict(), lambda: write_report(result, args.report))
    return 0


def write_outputs(args, payload: dict, report) -> None:
    """The ``--json PATH`` and ``--report DIR`` outputs every command writes the same way.

    ``payload`` is written atomically as JSON; ``report()`` writes the report into ``args.report`` and
    returns the file it wrote.
    """
    from ._io import write_json

    if args.json:
        write_json(args.json, payload)
        print(f"\nwrote {args.json}")
    if getattr(args, "report", None):
        print(f"wrote {report()}")


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="dataset -> features -> index -> search -> metrics and timings")
    add_common(p)
    p.add_argument("--k", type=int, default=10, help="how many results each query retrieves (default: 10)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--report", default=None, metavar="DIR", help="write a Markdown report with plots into DIR")
    p.add_argument("--head", default=None, metavar="PATH",
                   help="a head from `cbir train`: applied to the frozen features; its training images are left out")
    add_method_flags(p)
    p.set_defaults(func=run_evaluate)


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """The retrieval-method flags of `cbir evaluate` (cbir_kit.retrieval.Methods)."""
    g = p.add_argument_group("retrieval methods (each compared with exact Flat search on the same run)")
    g.add_argument("--index", default="Flat", help="faiss index_factory string: Flat, IVF256,Flat, HNSW32, IVF256,PQ32")
    g.add_argument("--nprobe", type=int, default=None, help="IVF: inverted lists scanned per query")
    g.add_argument("--ef-search", type=int, default=None, help="HNSW: search beam width (efSearch)")
    g.add_argument("--hash", default=None, metavar="METHOD:BITS", help="hash shortlist: itq:64, lsh:64 or pca:64")
    g.add_argument("--shortlist", type=int, default=None, metavar="M", help="hash shortlist size (default: 2k)")
    g.add_argument("--rerank", default=None, choices=["kreciprocal"], help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    g.add_argument("--qe", default=None, metavar="SPEC", help="query expansion: aqe:N or alpha:A:N")
    g.add_argument("--dba", type=int, default=None, metavar="N", help="database-side augmentation with N neighbours")
    g.add_argument("--tta", default=None, choices=["flip", "ms", "flip+ms"], help="test-time augmentation of the queries")
    g.add_argument("--tta-gallery", action="store_true", help="apply --tta to the gallery too")
    g.add_argument("--threshold", default=None, choices=["static", "dynamic"],
                   help="thresholded retrieval, calibrated on a seeded split of the queries, evaluated on the rest")
    g.add_argument("--calibration-fraction", type=float, default=0.5, help="share of queries used to calibrate --threshold")


def methods_from_args(args):
    from .retrieval import Methods

    return Methods(index=args.index, nprobe=args.nprobe, ef_search=args.ef_search, hash=args.hash,
                   shortlist=args.shortlist, rerank=args.rerank, qe=args.qe, dba=args.dba, tta=args.tta,
                   tta_gallery=args.tta_gallery, threshold=args.threshold,
                   calibration_fraction=args.calibration_fraction)


COMMANDS = [add_evaluate, add_compare, add_datasets, add_train, add_finetune, add_bench, add_grade]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cbir", description="cbir_kit: content-based image retrieval, taught")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def one_line_warnings(command: str):
    """A ``warnings.showwarning`` that prints a :class:`CbirWarning` as ``cbir COMMAND: warning: ...``.

    Each message is printed once, however many runs (``cbir compare``) raise it; other warnings
    keep Python's own format.
    """
    python_format = warnings.showwarning
    printed = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CbirWarning):
            if str(message) not in printed:
                printed.add(str(message))
                print(f"cbir {command}: warning: {message}", file=sys.stderr)
        else:
            python_format(message, category, filename, lineno, file, line)
    return show


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(args.command)
            return args.func(args)
    except CbirError as err:
        print(f"cbir {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cbir {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
