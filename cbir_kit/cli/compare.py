"""The ``cbir compare`` command: several configurations on one dataset, one table of quality and speed.

The work is :func:`cbir_kit.pipeline.comparison.compare` (notebook 03); this module parses the
flags and prints.
"""
from __future__ import annotations

from .common import add_common, runtime_from_args, write_outputs


# printed under the table of `cbir compare`
KEY_NOTE = ("recall, F1: macro over queries of the top-k set; ms/query: expansion + search + re-ranking.\n"
            "Every metric and timing: --json PATH or --report DIR.")


def run_compare(args) -> int:
    from ..pipeline.comparison import compare
    from ..pipeline.job import skip_notice
    from ..report.document import difference_lines, key_table, summary_table, write_report

    results = compare(args.configs, dataset=args.dataset, model=args.model, k=args.k,
                      runtime=runtime_from_args(args))
    first = results[0]
    print(f"{first.dataset}: {first.n_queries} queries, {first.n_gallery} gallery images, k {first.k}, "
          f"model {first.model}\n")
    skipped = list(dict.fromkeys(s for r in results for s in r.skipped))  # every run loads the same images
    print("\n".join(skip_notice(skipped) + [key_table(summary_table(results)), "", KEY_NOTE]))
    differences = difference_lines(results)
    if differences:
        print("\n" + "\n".join(differences))
    write_outputs(args, {"runs": [r.to_dict() for r in results]},
                  lambda: write_report(results, args.report, title="Comparison"))
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="several configurations on one dataset: one table of quality and speed")
    add_common(p)
    p.add_argument("--configs", nargs="+", default=["exact"], metavar="CONFIG",
                   help='configurations, each "key=value,key=value" of evaluate() options, '
                        'e.g. exact "index=HNSW32" "hash=itq:64,shortlist=200" (default: exact)')
    p.add_argument("--k", type=int, default=10, help="how many results each query retrieves (default: 10)")
    p.add_argument("--json", default=None, metavar="PATH", help="write all runs as JSON")
    p.add_argument("--report", default=None, metavar="DIR", help="write a Markdown report with plots into DIR")
    p.set_defaults(func=run_compare)
