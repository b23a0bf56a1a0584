"""Stage 7, report: the search benchmark's page, a scaling plot and a Markdown table (notebooks 02 and 04).

``cbir bench search --report DIR`` writes ``search_bench.md`` and ``search_scaling.png`` from the
result of :func:`cbir_kit.bench.search.bench_search`.
"""
from __future__ import annotations

from pathlib import Path

from .._io import write_text
from ..bench.search import display_frame, format_result, results_frame
from .document import markdown_table, save_figure


def plot_scaling(result: dict):
    """ms/query against gallery size per method, log-log; batched and single-query panels."""
    import matplotlib.pyplot as plt

    from . import plots  # noqa: F401  (selects the headless backend outside notebooks)

    frame = results_frame(result)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained", sharey=True)
    for ax, col, title in zip(axes, ("batched_ms", "single_ms"),
                              (f"batched ({result['n_queries']} queries per call)", "one query per call")):
        for i, (name, part) in enumerate(frame.groupby("family", sort=False)):
            recall = part[f"recall@{result['k']}"].iloc[-1]
            ax.plot(part["size"], part[col], marker="osD^v*"[i % 6], label=f"{name} ({recall:.2f})")
        ax.set(xscale="log", yscale="log", xlabel="gallery size", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("ms per query")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=8,
               title=f"method (recall@{result['k']}\nat {frame['size'].max():,})", title_fontsize=8)
    fig.suptitle(f"Search cost against gallery size ({result['dim']}-d, {result['features']['source']} features)")
    return fig


def write_search_report(result: dict, out_dir) -> Path:
    """``search_bench.md`` with the table and ``search_scaling.png`` in ``out_dir``."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(plot_scaling(result), out / "search_scaling.png")
    frame = display_frame(result).set_index("size")
    text = ["# Search benchmark", "", "```", format_result(result), "```", "",
            markdown_table(frame, digits=3), "", "![ms per query against gallery size](search_scaling.png)", ""]
    path = out / "search_bench.md"
    write_text(path, "\n".join(text))
    return path
