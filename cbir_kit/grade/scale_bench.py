"""Instructor side: ``cbir bench scale``, the same extraction and the same autograde batch on 1 and 2 Dask workers, side by side.

Measured in one run, each job three ways: in this process (``none``, no Dask), on a
``LocalCluster`` of one worker and on one of two workers.  Each cluster is started before its
clock starts (its start-up is reported apart, ``cluster_start_s``), so the ratios compare the
work: ``speedup`` = time on 1 worker / time on 2 workers, and ``overhead`` = time on 1 worker /
time in process (what shipping the work through Dask costs when it brings no parallelism).  A
small job (:data:`SMALL_JOB` images) shows that overhead where it matters most.

Extraction starts from an empty feature cache each time; autograde grades a class of synthetic
students on a two-notebook course made here (:func:`make_course`), in the sandbox.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from ..cluster import cluster_client
from ..datasets import load
from ..features import FeatureCache, create_extractor
from ..features.distributed import ClusterExtraction
from .nbgrade import autograde, release

SMALL_JOB = 16
WAYS = ("none", "local:1", "local:2")
EXERCISE = ("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
            "assert square(3) == 9\n### BEGIN HIDDEN TESTS\nassert square(-4) == 16\n### END HIDDEN TESTS")


def _timed(way: str, job) -> dict:
    """``job(cluster)`` timed in process or on a started cluster of ``way``."""
    t0 = time.perf_counter()
    with cluster_client(way) as client:
        started = time.perf_counter()
        job(client)
        done = time.perf_counter()
    return {"seconds": done - started, "cluster_start_s": started - t0}


def _ratios(row: dict) -> dict:
    return {**row, "speedup": row["local:1"]["seconds"] / row["local:2"]["seconds"],
            "overhead": row["local:1"]["seconds"] / row["none"]["seconds"]}


def bench_extraction(images: list, model: str, work: Path) -> dict:
    """Seconds to embed ``images`` from an empty cache: in process, on 1 worker, on 2 workers."""
    row = {}
    for way in WAYS:
        cache_dir = work / f"cache-{way.replace(':', '')}"

        def job(client, cache_dir=cache_dir):
            remote = ClusterExtraction(client) if client is not None else None
            FeatureCache(cache_dir, remote=remote).get_or_extract(create_extractor(model, device="cpu"), images,
                                                                  progress=False)
        row[way] = _timed(way, job)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return _ratios({"images": len(images), **row})


def make_course(root: Path, students: int, submissions: Path) -> None:
    """A two-notebook nbgrader course in ``root``, released, and ``students`` right answers in ``submissions``."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    def meta(grade_id, points=None):
        return {"nbgrader": {"grade": points is not None, "solution": points is None, "locked": points is not None,
                             "grade_id": grade_id, "schema_version": 3, **({"points": points} if points else {})}}

    (root / "source" / "ps1").mkdir(parents=True)
    (root / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "scale"\n')
    for name in ("first", "second"):
        nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                          cells=[new_code_cell(EXERCISE[0], metadata=meta("square")),
                                 new_code_cell(EXERCISE[1], metadata=meta("test_square", 2))])
        nbformat.write(nb, root / "source" / "ps1" / f"{name}.ipynb")
    release(root, progress=False)
    for s in range(students):
        folder = submissions / f"student{s:03d}" / "ps1"
        folder.mkdir(parents=True)
        for name in ("first", "second"):
            nb = nbformat.read(root / "release" / "ps1" / f"{name}.ipynb", as_version=4)
            nb.cells[0].source = "def square(x):\n    return x * x"
            nbformat.write(nb, folder / f"{name}.ipynb")


def bench_autograde(students: int, work: Path) -> dict:
    """Seconds to autograde ``students`` x 2 notebooks: in process, on 1 worker, on 2 workers."""
    subs = work / "submissions"
    make_course(work / "course", students, subs)
    row = {}
    for way in WAYS:
        course = work / f"course-{way.replace(':', '')}"
        shutil.copytree(work / "course", course)
        row[way] = _timed(way, lambda client, course=course: autograde(
            subs, course, work / f"grades-{way.replace(':', '')}", progress=False, cluster=client or "none"))
        shutil.rmtree(course, ignore_errors=True)
    return _ratios({"notebooks": 2 * students, **row})


def bench_scale(dataset: str = "demo", model: str = "efficientnet_lite0", students: int = 4, root=None) -> dict:
    """The three measurements of the module docstring, in one run."""
    ds = load(dataset, root=root)
    images = list(ds.gallery) + ([] if ds.leave_one_out else list(ds.query))
    with tempfile.TemporaryDirectory(prefix="cbir-bench-scale-") as tmp:
        tmp = Path(tmp)
        return {"dataset": ds.name, "model": model,
                "extraction": bench_extraction(images, model, tmp / "big"),
                "small_extraction": bench_extraction(images[:SMALL_JOB], model, tmp / "small"),
                "autograde": bench_autograde(students, tmp / "grading") if students else None}


def format_scale(result: dict) -> str:
    lines = [f"{'job':<34}{'in process':>12}{'1 worker':>11}{'2 workers':>11}{'1 vs 2':>9}{'Dask cost':>11}"]
    for key, what in (("extraction", f"extract {result['extraction']['images']} {result['dataset']} images"),
                      ("small_extraction", f"extract {SMALL_JOB} images (small job)"),
                      ("autograde", "autograde {notebooks} notebooks")):
        row = result.get(key)
        if row:
            lines.append(f"{what.format(**row):<34}" + "".join(f"{row[w]['seconds']:>10.1f}s" for w in WAYS)
                         + f"{row['speedup']:>8.2f}x{row['overhead']:>10.2f}x")
    starts = [result[k][w]["cluster_start_s"] for k in ("extraction", "small_extraction") for w in WAYS[1:]]
    lines.append(f"(seconds of work; starting a local cluster took {min(starts):.1f}-{max(starts):.1f} s more. "
                 "1 vs 2 = time on 1 worker / on 2; Dask cost = time on 1 worker / in process)")
    return "\n".join(lines)
