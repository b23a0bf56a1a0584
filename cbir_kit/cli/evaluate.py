"""The ``cbir evaluate`` command: dataset -> features -> index -> search -> metrics and timings.

The work is :func:`cbir_kit.pipeline.job.evaluate` (notebooks 01 and 03); the method flags map
onto :class:`cbir_kit.pipeline.stages.Methods`.
"""
from __future__ import annotations

import argparse

from .common import add_cluster_flag, add_common, runtime_from_args, write_outputs


def run_evaluate(args) -> int:
    from ..pipeline.job import evaluate

    coarse_of = None
    if args.save_threshold and not args.threshold:
        from ..errors import CbirError
        raise CbirError("--save-threshold needs --threshold static or --threshold dynamic (the rule to calibrate)")
    if args.save_threshold and (args.rerank or args.qe or args.dba or args.tta):
        from ..errors import CbirError
        raise CbirError("--save-threshold saves a threshold for plain searches of a collection; calibrate it "
                        "without --rerank, --qe, --dba and --tta")
    if args.hierarchy:   # read first: a bad file fails before the evaluation runs
        from ..datasets.manifest import read_hierarchy
        coarse_of = read_hierarchy(args.hierarchy)
    result = evaluate(dataset=args.dataset, model=args.model, k=args.k, head=args.head,
                      methods=methods_from_args(args), no_relevant=args.no_relevant,
                      runtime=runtime_from_args(args))
    print(result.table())
    if "exact_metrics" in result.config:
        exact = result.config["exact_metrics"]
        print("\nexact Flat on the same features: " + "  ".join(
            f"{name} {exact[name]:.4f}" for name in ("mAP", "P@1", "P@10", "R@10") if name in exact))
    if args.save_threshold:
        from ..threshold.saved import save_threshold
        save_threshold(args.save_threshold, result.config["threshold"], model=args.model, dataset=args.dataset)
        print(f"\nwrote {args.save_threshold} (use it with `cbir search DIR IMAGE --threshold {args.save_threshold}`)")
    from ..report.document import write_report

    write_outputs(args, result.to_dict(), lambda: write_report(result, args.report, coarse_of=coarse_of))
    return 0


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="dataset -> features -> index -> search -> metrics and timings")
    add_common(p)
    add_cluster_flag(p)
    p.add_argument("--k", type=int, default=10, help="how many results each query retrieves (default: 10)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--report", default=None, metavar="DIR", help="write a Markdown report with plots into DIR")
    p.add_argument("--head", default=None, metavar="PATH",
                   help="a head from `cbir train`: applied to the frozen features; its training images are left out")
    p.add_argument("--hierarchy", default=None, metavar="CSV",
                   help="fine,coarse class hierarchy: --report rolls the top-k class matrix up to the coarse classes")
    p.add_argument("--save-threshold", default=None, metavar="FILE",
                   help="with --threshold: save the calibrated threshold for `cbir search DIR --threshold FILE`")
    p.add_argument("--no-relevant", default="skip", choices=["skip", "zero"],
                   help="queries with no relevant gallery item: left out of every metric (skip, default) or "
                        "counted as 0 in every one (zero, trec_eval's rule)")
    add_method_flags(p)
    p.set_defaults(func=run_evaluate)


def add_method_flags(p: argparse.ArgumentParser) -> None:
    """The retrieval-method flags of `cbir evaluate` (cbir_kit.pipeline.stages.Methods)."""
    g = add_index_flags(p, "retrieval methods (each compared with exact Flat search on the same run)")
    g.add_argument("--rerank", default=None, choices=["kreciprocal"], help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    g.add_argument("--qe", default=None, metavar="SPEC", help="query expansion: aqe:N or alpha:A:N")
    g.add_argument("--dba", type=int, default=None, metavar="N", help="database-side augmentation with N neighbours")
    g.add_argument("--tta", default=None, choices=["flip", "ms", "flip+ms"], help="test-time augmentation of the queries")
    g.add_argument("--tta-gallery", action="store_true", help="apply --tta to the gallery too")
    g.add_argument("--threshold", default=None, choices=["static", "dynamic"],
                   help="thresholded retrieval, calibrated on a seeded split of the queries, evaluated on the rest")
    g.add_argument("--calibration-fraction", type=float, default=0.5, help="share of queries used to calibrate --threshold")


def add_index_flags(p: argparse.ArgumentParser, title: str = "index") -> argparse._ArgumentGroup:
    """The flags of :class:`cbir_kit.index.persist.IndexSpec`, in a group other flags may join."""
    g = p.add_argument_group(title)
    g.add_argument("--index", default="Flat", help="faiss index_factory string: Flat, IVF256,Flat, HNSW32, IVF256,PQ32")
    g.add_argument("--nprobe", type=int, default=None, help="IVF: inverted lists scanned per query")
    g.add_argument("--ef-search", type=int, default=None, help="HNSW: search beam width (efSearch)")
    g.add_argument("--hash", default=None, metavar="METHOD:BITS", help="hash shortlist: itq:64, lsh:64 or pca:64")
    g.add_argument("--shortlist", type=int, default=None, metavar="M", help="hash shortlist size (default: 2k)")
    return g


def methods_from_args(args):
    from ..pipeline.stages import Methods

    return Methods(index=args.index, nprobe=args.nprobe, ef_search=args.ef_search, hash=args.hash,
                   shortlist=args.shortlist, rerank=args.rerank, qe=args.qe, dba=args.dba, tta=args.tta,
                   tta_gallery=args.tta_gallery, threshold=args.threshold,
                   calibration_fraction=args.calibration_fraction)
