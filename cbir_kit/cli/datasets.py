"""The ``cbir datasets`` command: list the registered datasets, fetch one, or describe any dataset spec.

* ``cbir datasets list [--root DIR]``: every registered name, whether it is present under the
  data root, and what it is.
* ``cbir datasets fetch NAME [--root DIR]``: download (or build, or check) it once.
* ``cbir datasets info SPEC [--root DIR]``: load a name, ``folder:PATH``, ``qg:PATH`` or
  ``csv:PATH`` and print its size, classes and split manifest hash (it never downloads: a
  registered dataset that is not on disk yet is an error naming the fetch command).  For
  ``roxford5k`` / ``rparis6k`` without images it reports the ground truth alone.
"""
from __future__ import annotations

from collections import Counter

from ..datasets import FETCHERS, REGISTRY, default_root, fetch, load
from ..datasets.base import DatasetError
from ..datasets.revisitop import IMAGE_URLS, load_ground_truth


def _present(name: str, root) -> str:
    folder = default_root(root) / name
    return "present" if folder.is_dir() and any(folder.iterdir()) else "-"


def run_list(args) -> int:
    print(f"data root: {default_root(args.root).resolve()}\n")
    print(f"{'name':<11} {'on disk':<8} description")
    for name, (_, description) in REGISTRY.items():
        print(f"{name:<11} {_present(name, args.root):<8} {description}")
    print("\nalso: folder:PATH (class sub-folders), qg:PATH (query/ + gallery/), csv:PATH (split,path,label)")
    return 0


def run_fetch(args) -> int:
    folder = fetch(args.name, root=args.root, progress=not args.no_progress)
    print(f"{args.name}: ready in {folder}")
    return 0


def _ground_truth_info(name: str, root) -> list[str]:
    gt = load_ground_truth(name, root)
    counts = gt.counts()
    return [f"{name}: ground truth only (images not fetched): {len(gt.qimlist)} queries, "
            f"{len(gt.imlist)} database images",
            f"ground truth  {gt.path}",
            f"totals        easy {counts['easy']}, hard {counts['hard']}, junk {counts['junk']}"]


def run_info(args) -> int:
    home = default_root(args.root) / args.spec
    if args.spec in FETCHERS and args.spec not in ("demo", "digits") and not home.is_dir():
        raise DatasetError(f"{args.spec} is not under {home.parent.resolve()}; run `cbir datasets fetch {args.spec}"
                           f"{'' if args.root is None else f' --root {args.root}'}` first")
    try:
        ds = load(args.spec, root=args.root, seed=args.seed) if args.spec in REGISTRY else load(args.spec)
    except DatasetError:
        if args.spec not in IMAGE_URLS:
            raise
        print("\n".join(_ground_truth_info(args.spec, args.root)))
        return 0
    print(ds.describe())
    for key in ("manifest", "manifest_sha256", "folder", "ground_truth"):
        if key in ds.info:
            print(f"{key:<16} {ds.info[key]}")
    counts = Counter(ds.gallery_labels.tolist())
    if ds.gnd is None:
        shown = ", ".join(f"{label} {n}" for label, n in sorted(counts.items())[:20])
        print(f"gallery/class   {shown}{' ...' if len(counts) > 20 else ''}")
    return 0


def add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list, fetch and inspect datasets")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(q):
        q.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")

    q = actions.add_parser("list", help="registered datasets and whether they are on disk")
    common(q)
    q.set_defaults(func=run_list)
    q = actions.add_parser("fetch", help="download, build or check a registered dataset")
    q.add_argument("name", choices=sorted(FETCHERS), metavar="NAME", help=", ".join(sorted(FETCHERS)))
    common(q)
    q.add_argument("--no-progress", action="store_true", help="hide progress bars")
    q.set_defaults(func=run_fetch)
    q = actions.add_parser("info", help="load a dataset spec and describe it")
    q.add_argument("spec", metavar="SPEC", help="a registered name, folder:PATH, qg:PATH or csv:PATH")
    common(q)
    q.add_argument("--seed", type=int, default=0, help="split seed for seeded datasets (default: 0)")
    q.set_defaults(func=run_info)
