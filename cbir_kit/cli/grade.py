"""The ``cbir grade`` command: release and autograde the nbgrader course, run the retrieval challenge."""
from __future__ import annotations

from .common import add_cluster_flag


def _release(args) -> int:
    from ..grade.nbgrade import release
    release(args.course, progress=True)
    return 0


def _limits(pairs: list[str]) -> dict:
    """``--limit NAME=VALUE`` flags as a dict of sandbox limits (names and types of ``Limits``)."""
    from ..errors import CbirError
    from ..grade.sandbox import Limits

    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        default = getattr(Limits, name.strip(), None)
        if default is None or not value:
            raise CbirError(f"--limit {pair!r}: expected NAME=VALUE with NAME one of "
                            f"{', '.join(sorted(Limits.__dataclass_fields__))}")
        try:
            out[name.strip()] = type(default)(value)
        except ValueError:
            raise CbirError(f"--limit {pair!r}: {name.strip()} takes a number") from None
    return out


def _autograde(args) -> int:
    from ..grade.nbgrade import autograde
    rows = autograde(args.submissions, args.course, args.out, cell_timeout=args.cell_timeout,
                     notebook_timeout=args.notebook_timeout, sandbox=args.sandbox,
                     limits={"memory_mb": args.memory_mb, "cpu_s": args.cpu_s, **_limits(args.limit)},
                     cluster=args.cluster)
    total: dict[str, list[float]] = {}
    for r in rows:
        t = total.setdefault(r["student"], [0.0, 0.0, 0.0])
        if r["status"] == "manual":
            t[2] += r["max_points"]
        else:
            t[0] += r["points"]
            t[1] += r["max_points"]
    for student, (got, out_of, manual) in sorted(total.items()):
        print(f"{student:24s} {got:g} / {out_of:g}" + (f"  (+ {manual:g} points of written answers to grade by hand)"
                                                        if manual else ""))
    print(f"\nwrote {args.out}/grades.csv and {args.out}/feedback/")
    return 0


def _challenge(args) -> int:
    from ..grade.challenge import run_challenge
    from ..grade.leaderboard import rows
    summary = run_challenge(args.submissions, args.dataset, args.out, config=args.config, root=args.root,
                            cluster=args.cluster)
    print()
    for r in rows(summary):
        line = f"{r['rank']:3d}. {r['student']:24s} score {r['score'] or 0:6.2f}"
        if r["status"] == "ok":
            line += f"  quality {r['quality']:.3f}  speed-up {r['speedup']:.2f}"
        else:
            line += f"  failed: {r['reason']}"
        print(line)
    print(f"\nwrote {args.out}/leaderboard.csv, leaderboard.html, results.json")
    return 0


def _report(args) -> int:
    from ..report.grades import exercise_table, read_grades, write_grade_report

    path = write_grade_report(args.grades, args.out)
    table = exercise_table(read_grades(args.grades))
    weak = [f"{nb}: {ex}" for nb, ex in table.index[table["visible test too weak"]]]
    print(f"{len(table)} exercises, pass rate {table['pass rate'].mean():.0%} on average")
    if weak:
        print("visible tests that let many hidden failures through: " + ", ".join(weak))
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0


def add_grade(sub) -> None:
    p = sub.add_parser("grade", help="instructor grading: nbgrader course and retrieval challenge")
    g = p.add_subparsers(dest="grade_command", metavar="ACTION", required=True)

    r = g.add_parser("release", help="nbgrader generate_assignment for every assignment of the course")
    r.add_argument("--course", default="grading", help="nbgrader course folder (default: grading)")
    r.set_defaults(func=_release)

    a = g.add_parser("autograde", help="autograde SUBMISSIONS/<student>/<assignment>/*.ipynb in the sandbox")
    a.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                   help="one folder per student: SUBMISSIONS_DIR/<student>/<assignment>/<notebook>.ipynb")
    a.add_argument("--course", default="grading", help="nbgrader course folder (default: grading)")
    a.add_argument("--out", default="grades", help="where grades.csv and feedback/ go (default: grades)")
    a.add_argument("--cell-timeout", type=float, default=60, help="seconds per cell (default: 60)")
    a.add_argument("--notebook-timeout", type=float, default=600, help="seconds per notebook (default: 600)")
    a.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "rlimits"],
                   help="bwrap: bubblewrap isolation (required); rlimits: resource limits only; "
                        "auto: bwrap when it works (default)")
    a.add_argument("--memory-mb", type=int, default=8192, help="address-space limit per kernel (default: 8192)")
    a.add_argument("--cpu-s", type=int, default=600, help="CPU seconds per kernel (default: 600)")
    a.add_argument("--limit", action="append", default=[], metavar="NAME=VALUE",
                   help="any other sandbox limit, e.g. notebook_output_mb=16, work_mb=256, group_memory_mb=4096 "
                        "(repeatable; names in grading/README.md)")
    add_cluster_flag(a, "the grading, one task per student")
    a.set_defaults(func=_autograde)

    rep = g.add_parser("report", help="per exercise: pass rate, common errors, hidden failures, grading times")
    rep.add_argument("grades", metavar="GRADES_CSV", help="the grades.csv of `cbir grade autograde`")
    rep.add_argument("--out", default="grades-report", help="folder for report.md, report.html and the plot "
                                                            "(default: grades-report)")
    rep.set_defaults(func=_report)

    c = g.add_parser("challenge", help="run the retrieval challenge and write the leaderboard")
    c.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                   help="<student>.py, <student>/submission.py or <student>/<notebook>.ipynb per student")
    c.add_argument("--dataset", default="demo", help="query/gallery dataset spec (default: demo)")
    c.add_argument("--config", default=None, help="challenge TOML (see grading/challenge.toml)")
    c.add_argument("--out", default="leaderboard", help="output folder (default: leaderboard)")
    c.add_argument("--root", default=None, help="data root (default: $CBIR_DATA, else the clone's datasets/, else the user data folder)")
    add_cluster_flag(c, "the correctness runs, one task per submission (timing stays serial, on this machine)")
    c.set_defaults(func=_challenge)
