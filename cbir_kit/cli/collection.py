"""The ``cbir index`` and ``cbir search`` commands: build, grow and describe a collection, then search it.

* ``cbir index build --dataset SPEC [--model SPEC] [--index FACTORY | --hash M:B] --out DIR``
* ``cbir index add DIR PATH...`` (image files or folders; ``--label`` names their class)
* ``cbir index info DIR``
* ``cbir search DIR [IMAGE|FOLDER ...] [--text "a red bus"] [--k 10] [--threshold FILE]
  [--json PATH] [--grid PNG]``: per query, the course assignment's format,
  ``Top 10 most similar images:`` then ``1. <path> - Similarity Score: 0.67``.

The work is :class:`cbir_kit.collection.Collection` (notebook 02).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import add_cluster_flag, add_common, add_network_flags, runtime_from_args
from .evaluate import add_index_flags


def _shown(path: str) -> str:
    """A path as the user would type it: relative to the current folder when it is under it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def run_build(args) -> int:
    from ..collection import Collection
    from ..index.persist import IndexSpec

    spec = IndexSpec(args.index, nprobe=args.nprobe, ef_search=args.ef_search, hash=args.hash, shortlist=args.shortlist)
    c = Collection.build(args.dataset, args.out, model=args.model, index=spec, overwrite=args.force,
                         runtime=runtime_from_args(args))
    cached = c.manifest["history"][0]["features_cached"]
    print(f"built {args.out}: {len(c)} images, {c.model}, index {spec.describe()}"
          + ("; features from the cache, nothing extracted" if cached else ""))
    return 0


def run_add(args) -> int:
    from ..collection import Collection

    c = Collection.open(args.collection, runtime=runtime_from_args(args))
    report = c.add(args.paths, label=args.label)
    for path, reason in report["failed"]:
        print(f"cbir index add: skipped {path}: {reason}", file=sys.stderr)
    for path in report["duplicates"]:
        print(f"already in the collection: {path}")
    print(f"added {len(report['added'])} image(s) to {args.collection}: now {len(c)} images")
    return 0


def run_info(args) -> int:
    from ..collection import Collection

    info = Collection.open(args.collection, mmap=True).info()
    rows = [("folder", info["folder"]), ("model", info["model"]), ("images", info["n"]), ("dimension", info["dim"]),
            ("index", info["index"]), ("index bytes/vector", f"{info['index_bytes_per_vector']:.1f}"),
            ("feature bytes/vector", info["feature_bytes_per_vector"]), ("on disk", f"{info['bytes_on_disk']:,} bytes"),
            ("labels", info["labels"]), ("text search", "yes (CLIP)" if info["text_search"] else "no (image-only model)"),
            ("source", info["source"]),
            ("created", f"{info['created']['utc']} on {info['created']['host']} by cbir_kit {info['created']['cbir_kit']}"),
            ("history", "; ".join(f"{h['action']} {h['n']} at {h['utc']}" for h in info["history"]))]
    print("\n".join(f"{name:<21} {value}" for name, value in rows))
    return 0


def _query_images(items: list[str]) -> list[str]:
    """Files as given, folders expanded to their images (sorted); a missing path is kept so it is reported."""
    from ..datasets.manifest import list_images

    out = []
    for item in items:
        out += [str(p) for p in list_images(Path(item))] if Path(item).is_dir() else [item]
    return out


def _print_results(results, k: int, threshold: bool) -> None:
    for r in results:
        if r.error:
            continue
        print(f"\nQuery: {_shown(r.query) if os.path.exists(r.query) else r.query}")
        head = f"{len(r.results)} images within the threshold:" if threshold else \
            f"Top {len(r.results)} most similar images:"
        print(head)
        for hit in r.results:
            print(f"{hit.rank}. {_shown(hit.path)} - Similarity Score: {hit.score:.2f}")


def run_search(args) -> int:
    from .._io import write_json
    from ..collection import Collection

    if bool(args.images) == (args.text is not None):
        from ..errors import CbirError
        raise CbirError("give query images (files or folders) or --text \"...\"" +
                        (", not both" if args.images else ""))
    c = Collection.open(args.collection, mmap=args.mmap, runtime=runtime_from_args(args))
    if args.text is not None:
        results = c.search(text=args.text, k=args.k, threshold=args.threshold)
    else:
        results = c.search(images=_query_images(args.images), k=args.k, threshold=args.threshold)
    _print_results(results, args.k, args.threshold is not None)
    for r in results:
        if r.error:
            print(f"cbir search: error: {r.error}", file=sys.stderr)
    if args.json:
        write_json(args.json, {"collection": str(args.collection), "model": c.model, "k": args.k,
                               "threshold": args.threshold, "queries": [r.to_dict() for r in results],
                               "timings": c.timings_})
        print(f"\nwrote {args.json}")
    if args.grid:
        from ..report.document import save_figure
        from ..report.plots import plot_search_grid

        save_figure(plot_search_grid(results, k=args.k), Path(args.grid))
        print(f"wrote {args.grid}")
    return 1 if any(r.error for r in results) else 0


def _runtime_flags(p) -> None:
    """The runtime flags of a command on an existing collection (its model and data are in the collection)."""
    add_network_flags(p)
    p.set_defaults(root=None, seed=0)


def add_index(sub) -> None:
    p = sub.add_parser("index", help="build a collection (a gallery indexed once), add images to it, describe it")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("build", help="embed a dataset's gallery and write a collection folder")
    add_common(q)
    add_cluster_flag(q, "feature extraction and the adding of IVF index shards")
    add_index_flags(q)
    q.add_argument("--out", required=True, metavar="DIR", help="the collection folder to write")
    q.add_argument("--force", action="store_true", help="replace a collection already in --out")
    q.set_defaults(func=run_build)
    q = actions.add_parser("add", help="embed images (files or folders) and add them to a collection")
    q.add_argument("collection", metavar="DIR", help="a collection from `cbir index build`")
    q.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    q.add_argument("--label", default=None, help="the class of the added images (default: none)")
    _runtime_flags(q)
    q.set_defaults(func=run_add)
    q = actions.add_parser("info", help="model, size, index type and bytes per vector of a collection")
    q.add_argument("collection", metavar="DIR", help="a collection from `cbir index build`")
    q.set_defaults(func=run_info)


def add_search(sub) -> None:
    p = sub.add_parser("search", help="search a collection with images or a text (CLIP models)")
    p.add_argument("collection", metavar="DIR", help="a collection from `cbir index build`")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image files or folders")
    p.add_argument("--text", default=None, action="append",
                   help='a text query, e.g. "a red bus" (collections of CLIP models); repeat for several')
    p.add_argument("--k", type=int, default=10, help="results per query (default: 10)")
    p.add_argument("--threshold", default=None, metavar="FILE",
                   help="a threshold from `cbir evaluate --save-threshold`: every image within it instead of --k")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--grid", default=None, metavar="PNG", help="draw each query and its results as thumbnails")
    p.add_argument("--mmap", action="store_true",
                   help="memory-map the collection (fast for large ones; checks file sizes, not checksums)")
    _runtime_flags(p)
    p.set_defaults(func=run_search)
