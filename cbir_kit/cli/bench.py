"""The ``cbir bench`` command: benchmarks that compare methods side by side in one run.

``cbir bench extract`` (:mod:`cbir_kit.bench.extract`, notebook 01), ``cbir bench search``
(:mod:`cbir_kit.bench.search`, notebooks 02 and 04), ``cbir bench collection``
(:mod:`cbir_kit.collection.bench`, notebook 02) and ``cbir bench scale``
(:mod:`cbir_kit.grade.scale_bench`, docs/scale.md).  The library is imported when a benchmark
runs, so ``cbir --help`` loads no torch.
"""
from __future__ import annotations

from ..errors import CbirError
from ..features.specs import OFFLINE_MODEL
from ..bench.settings import DEFAULT_SIZES, METHODS
from .common import write_outputs


def run_bench_search(args) -> int:
    from ..bench.search import bench_search, dataset_features, file_features, format_result
    from ..report.search_bench import write_search_report

    if args.features:
        real, name = file_features(args.features)
    else:
        real, name = dataset_features(args.dataset, args.model or OFFLINE_MODEL, root=args.root, cache_dir=args.cache,
                                      device=args.device, progress=not args.no_progress)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError as err:
        raise CbirError(f"--sizes must be comma-separated integers, e.g. 10000,100000; got {args.sizes!r}") from err
    result = bench_search(real, name, sizes=sizes, dim=args.dim, n_queries=args.queries, k=args.k,
                          methods=args.methods, target_recall=args.target_recall, repeats=args.repeats,
                          n_single=args.single_queries, algo2_size=args.algo2_size or None, seed=args.seed,
                          progress=not args.no_progress)
    print(format_result(result))
    write_outputs(args, result, lambda: write_search_report(result, args.report))
    return 0


def add_bench_search(bench_sub) -> None:
    """Register ``search`` under the ``cbir bench`` sub-parsers."""
    p = bench_sub.add_parser("search", help="exact, IVF, HNSW, IVF-PQ and hash shortlist + re-rank by gallery size")
    p.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES),
                   help="gallery sizes, comma-separated (default: 10000,100000,1000000)")
    p.add_argument("--dim", type=int, default=256, help="PCA dimension of the benchmark space (default: 256)")
    p.add_argument("--queries", type=int, default=100, help="measured queries per size (default: 100)")
    p.add_argument("--single-queries", type=int, default=None,
                   help="of those, how many are also timed one per call (default: all)")
    p.add_argument("--k", type=int, default=10, help="recall@k against exact search (default: 10)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(METHODS)} (itqBITS for any bits; default: all)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="knobs (nprobe, efSearch, shortlist) are tuned to reach this recall@k (default: 0.95)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each batched search (default: 3)")
    p.add_argument("--algo2-size", type=int, default=10_000,
                   help="corpus size of the Algo 2 comparison, 100-d; 0 skips it (default: 10000)")
    p.add_argument("--dataset", default="demo",
                   help="real set whose features are used or imitated (default: demo; e.g. corel1k or csv:PATH)")
    p.add_argument("--model", default=OFFLINE_MODEL, help=f"model for those features (default: {OFFLINE_MODEL})")
    p.add_argument("--features", default=None, metavar="PATH",
                   help="a .npy (N, D) feature matrix to use or imitate instead of --dataset/--model")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $CBIR_CACHE, else ~/.cache/cbir_kit)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the network that makes the real features runs (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic features and queries (default: 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--report", default=None, metavar="DIR", help="write search_bench.md and search_scaling.png into DIR")
    p.add_argument("--no-progress", action="store_true", help="hide progress lines")
    p.set_defaults(func=run_bench_search)


def format_report(r: dict) -> str:
    lines = [f"dataset {r['dataset']}  model {r['model']}  images {r['n_images']}  device {r['device']} "
             f"({r['precision']})",
             f"pipeline: batch {r['batch_size']}, {r['num_workers']} decoding threads, {r['num_threads']} torch threads "
             f"in {r['streams']} streams, network {r['network']}",
             "", "method      images/s   CPU ms/image",
             f"naive      {r['naive']['images_per_s']:9.1f}   {r['naive']['cpu_ms_per_image']:12.1f}",
             f"pipeline   {r['pipeline']['images_per_s']:9.1f}   {r['pipeline']['cpu_ms_per_image']:12.1f}",
             "", f"speedup {r['speedup']:.2f}x   max |f_naive - f_pipeline| {r['max_abs_diff']:.2e}",
             f"model {r['model_gflops']:.3f} GFLOP/image, sgemm {r['sgemm_gflops']:.1f} GFLOP/s, "
             f"FLOP-bound ratio {r['flop_bound_ratio']:.3f}"]
    if r.get("batch_sweep"):
        lines += ["", "model-only images/s by batch size: " +
                  ", ".join(f"{k}: {v:.1f}" for k, v in r["batch_sweep"].items())]
    return "\n".join(lines)


def run_bench_extract(args) -> int:
    from .._io import write_json
    from ..bench.extract import batch_size_sweep, bench_extract

    result = bench_extract(dataset=args.dataset, model=args.model, limit=args.limit, block=args.block,
                           device=args.device, batch_size=args.batch_size, num_workers=args.workers,
                           num_threads=args.threads, precision=args.precision,
                           pretrained=not args.random_weights, root=args.root, progress=not args.no_progress)
    if args.batch_sizes:
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        sweep = batch_size_sweep(args.model, sizes, device=args.device, num_threads=args.threads)
        result["batch_sweep"] = {str(k): v for k, v in sweep.items()}
    print(format_report(result))
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0


def add_bench_extract(bench_sub) -> None:
    """Register ``extract`` under a ``cbir bench`` sub-parser collection."""
    p = bench_sub.add_parser("extract", help="naive per-image loop vs cbir_kit's extraction pipeline")
    p.add_argument("--dataset", default="demo", help="dataset spec as in cbir evaluate (default: demo)")
    p.add_argument("--model", default=OFFLINE_MODEL, help=f"model spec (default: {OFFLINE_MODEL})")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="where the network runs (default: cpu)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="arithmetic of the forward pass (default: auto = fp16 on CUDA, fp32 elsewhere)")
    p.add_argument("--batch-size", type=int, default=None, help="pipeline batch size (default: per model)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(4, cores))")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--block", type=int, default=100, help="images per alternating block (default: 100)")
    p.add_argument("--batch-sizes", default=None, metavar="LIST",
                   help="also time the model alone at these batch sizes, e.g. 1,4,8,16,32")
    p.add_argument("--random-weights", action="store_true", help="random weights (timing only; no download)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress lines")
    p.set_defaults(func=run_bench_extract)


def run_bench_collection(args) -> int:
    from ..collection.bench import bench_open, bench_query, format_bench
    from ..runtime import Runtime

    if args.size < 1 and args.queries < 1:
        raise CbirError("--size 0 and --queries 0 leave nothing to measure")
    query = bench_query(args.dataset, args.model, n_queries=args.queries,
                        runtime=Runtime(root=args.root, cache_dir=args.cache, device=args.device,
                                        progress=not args.no_progress)) if args.queries > 0 else None
    opened = bench_open(args.size, args.dim, folder=args.tmp, seed=args.seed) if args.size > 0 else None
    print(format_bench(query, opened))
    write_outputs(args, {"query": query, "open": opened}, None)
    return 0


def add_bench_collection(bench_sub) -> None:
    """Register ``collection`` under the ``cbir bench`` sub-parsers."""
    p = bench_sub.add_parser("collection", help="one new query image end to end; opening a 1M-vector collection "
                                                "memory-mapped vs read")
    p.add_argument("--dataset", default="demo", help="the collection's images and the queries (default: demo)")
    p.add_argument("--model", default=OFFLINE_MODEL, help=f"model spec (default: {OFFLINE_MODEL})")
    p.add_argument("--queries", type=int, default=20, help="query images timed one at a time; 0 skips (default: 20)")
    p.add_argument("--size", type=int, default=1_000_000,
                   help="vectors in the synthetic collection that is opened; 0 skips (default: 1000000)")
    p.add_argument("--dim", type=int, default=1280,
                   help="their dimension (default: 1280, EfficientNet-Lite0's)")
    p.add_argument("--tmp", default=None, metavar="DIR",
                   help="where the synthetic collection is written (default: the system's temporary folder)")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--cache", default=None, help="feature cache folder (default: $CBIR_CACHE, else ~/.cache/cbir_kit)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"], help="where the network runs (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic vectors (default: 0)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run_bench_collection)


def run_bench_scale(args) -> int:
    from ..grade.scale_bench import bench_scale, format_scale

    if args.students < 0:
        raise CbirError(f"--students must be 0 or more; got {args.students}")
    result = bench_scale(args.dataset, args.model, students=args.students, root=args.root)
    print(format_scale(result))
    write_outputs(args, result, None)
    return 0


def add_bench_scale(bench_sub) -> None:
    """Register ``scale`` under the ``cbir bench`` sub-parsers."""
    p = bench_sub.add_parser("scale", help="extraction and an autograde batch in process, on 1 and on 2 Dask workers")
    p.add_argument("--dataset", default="demo", help="images to extract (default: demo; e.g. csv:PATH)")
    p.add_argument("--model", default=OFFLINE_MODEL, help=f"model spec (default: {OFFLINE_MODEL})")
    p.add_argument("--students", type=int, default=4,
                   help="synthetic students of the autograde batch, 2 notebooks each; 0 skips it (default: 4)")
    p.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result as JSON")
    p.set_defaults(func=run_bench_scale)


# Benchmarks under `cbir bench`; each is an `add_<name>(bench_subparsers)` function.
BENCH_COMMANDS = [add_bench_extract, add_bench_search, add_bench_collection, add_bench_scale]


def add_bench(sub) -> None:
    """Register ``cbir bench`` and its benchmarks (:data:`BENCH_COMMANDS`)."""
    p = sub.add_parser("bench", help="benchmarks that compare methods side by side in one run")
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for add in BENCH_COMMANDS:
        add(bench_sub)
