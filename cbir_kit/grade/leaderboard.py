"""Instructor side: the leaderboard files of a challenge run (``leaderboard.csv``, ``.html``, ``results.json``).

Leaderboard files of a challenge run: ``leaderboard.csv``, ``leaderboard.html``, ``results.json``.

Rows are sorted by score (high first); failed submissions come last with their reason.  The
HTML page embeds a quality-vs-speed scatter plot (PNG) and states
the score formula with the weights of this run.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from .._io import write_json, write_text
from .scoring import BASELINE_NAME
from .text import REASON_LIMIT, plot_label, spreadsheet_safe

COLUMNS = ["rank", "student", "status", "score", "quality", "precision", "recall", "f1", "mAP",
           "build_s", "retrieve_s", "retrieve_ms_per_query", "speedup", "reason"]


def rows(summary: dict) -> list[dict]:
    """One flat dict per submission (the baseline included), ranked by score."""
    out = []
    for r in summary["results"]:
        row = {"student": r["student"], "status": r["status"], "reason": r["reason"],
               **{k: r["scores"].get(k) for k in ("score", "quality", "speedup")},
               **{k: r["metrics"].get(k) for k in ("precision", "recall", "f1", "mAP")},
               **{k: r["timings"].get(k) for k in ("build_s", "retrieve_s", "retrieve_ms_per_query")}}
        out.append(row)
    out.sort(key=lambda row: (row["status"] != "ok", -(row["score"] or 0.0), row["student"]))
    for i, row in enumerate(out, 1):
        row["rank"] = i
    return out




def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scatter_png(table: list[dict], baseline: str) -> bytes:
    """Quality (y) against speed-up over the baseline (x, log scale) of the working submissions."""
    import matplotlib.pyplot as plt

    ok = [r for r in table if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for r in ok:
        is_base = r["student"] == baseline
        ax.scatter(r["speedup"], r["quality"], s=60, marker="*" if is_base else "o",
                   color="black" if is_base else "tab:blue", zorder=3)
        ax.annotate(plot_label(r["student"]), (r["speedup"], r["quality"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("speed-up over the baseline (baseline time / time), log scale")
    ax.set_ylabel("quality (weighted metrics)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Retrieval challenge: quality vs speed")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _formula(cfg: dict) -> str:
    s = cfg["score"]
    q = " + ".join(f"{w:g}·{m}" for m, w in s["quality"].items())
    band = s["noise_band"]
    return (f"quality = ({q}) / {sum(s['quality'].values()):g}, of the worst run; "
            f"T = {' + '.join(s['time'])} time (median of the timed runs, each a fresh process; build includes "
            f"the import); speed-up = T_baseline / T, counted as 1 between {1 / (1 + band):.3g} and {1 + band:.3g} "
            f"(noise band {band:g}); speed = min(speed-up, {s['speed_cap']:g}) / {s['speed_cap']:g}; "
            f"score = 100 · ({s['quality_weight']:g}·quality + {s['speed_weight']:g}·speed) / "
            f"{s['quality_weight'] + s['speed_weight']:g}; failed submissions score 0.")


def write_leaderboard(summary: dict, out_dir: Path) -> dict[str, Path]:
    """Write the three files into ``out_dir`` (each atomically) and return their paths."""

    out_dir.mkdir(parents=True, exist_ok=True)
    for r in summary["results"]:   # a reason can be megabytes of a submission's output: keep its head
        r["reason"] = str(r.get("reason") or "")[:REASON_LIMIT]
    table = rows(summary)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: spreadsheet_safe(_fmt(r[k])) for k in COLUMNS})
    paths = {"csv": out_dir / "leaderboard.csv", "html": out_dir / "leaderboard.html",
             "json": out_dir / "results.json"}
    write_text(paths["csv"], buf.getvalue())
    write_json(paths["json"], summary)
    png = base64.b64encode(scatter_png(table, BASELINE_NAME)).decode()
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in COLUMNS) + "</tr>\n"
                   for r in table)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Retrieval challenge leaderboard</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}} .note{{color:#555}}</style></head>
<body><h1>Retrieval challenge leaderboard</h1>
<p>Dataset <b>{html.escape(summary['dataset'])}</b>: {summary['n_queries']} hidden queries,
{summary['n_gallery']} gallery images, k = {summary['k']}.</p>
<p class="note">Sandbox: {html.escape(summary['sandbox_note'])}</p>
<p class="note">Score: {html.escape(_formula(summary['config']))}</p>
<p class="note">precision = relevant retrieved / retrieved; recall = relevant retrieved / relevant in the gallery;
F1 = 2PR/(P+R) per query; mAP = AP of the returned ranking over all relevant items; all macro-averaged over queries.</p>
<img alt="quality vs speed" src="data:image/png;base64,{png}">
<table><tr>{head}</tr>
{body}</table></body></html>
"""
    write_text(paths["html"], page)
    return paths
