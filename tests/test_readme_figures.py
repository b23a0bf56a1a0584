"""README's Corel-1K quality table is what its command prints: recomputed here and compared, digit for digit."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cbir_kit.pipeline.comparison import compare

README = Path(__file__).resolve().parents[1] / "README.md"


def _quality_table() -> list[list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index("| configuration | mAP | P@10 | precision | recall | F1 | against exact |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_the_corel_quality_table_reproduces_from_its_command(corel_csv):
    rows = _quality_table()
    command = README.read_text().split("| configuration | mAP")[0].rsplit("```bash", 1)[1]
    assert "cbir compare --dataset csv:../shared/data/corel1k/labels.csv" in command
    configs = [row[0].strip("`") for row in rows]
    assert all(re.sub(r'["\\\s]', "", config) in re.sub(r'["\\\s]', "", command) for config in configs)
    results = compare(configs, dataset=f"csv:{corel_csv}", model="efficientnet_lite0", k=10, progress=False,
                      device="cpu")
    for row, result in zip(rows, results):
        m = result.metrics
        printed = [f"{m['mAP']:.4f}", f"{m['P@10']:.3f}", f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}"]
        assert row[1:6] == printed, (row[0], row[1:6], printed)
        if "recall@10" in row[6]:
            key = "shortlist_recall@10" if "shortlist" in row[6] else "recall@10_vs_exact"
            assert row[6].split()[1] == f"{m[key]:.3f}", row
