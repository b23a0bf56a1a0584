"""`cbir grade release/autograde` on a tiny two-notebook nbgrader course built in the test."""
from __future__ import annotations

import csv
import html
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from nbformat.v4 import new_code_cell, new_notebook  # noqa: E402

from cbir_kit.grade import nbgrade  # noqa: E402
from cbir_kit.grade.feedback import load_catalogue  # noqa: E402
from cbir_kit.grade.sandbox import bwrap_status  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def _meta(grade_id, solution=False, points=None):
    m = {"grade": points is not None, "solution": solution, "locked": points is not None,
         "grade_id": grade_id, "schema_version": 3}
    if points is not None:
        m["points"] = points
    return {"nbgrader": m}


def make_course(root: Path) -> None:
    (root / "source" / "ps1").mkdir(parents=True)
    (root / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "tiny"\n')
    (root / "course.toml").write_text(f'misconceptions = "{REPO / "notebooks" / "misconceptions.toml"}"\n')
    squares = new_notebook(metadata=KERNELSPEC, cells=[
        new_code_cell("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
                      metadata=_meta("square", solution=True)),
        new_code_cell("assert square(3) == 9", metadata=_meta("test_square_visible", points=1)),
        new_code_cell("### BEGIN HIDDEN TESTS\nassert square(-4) == 16, 'HIDDEN_SECRET_ONE'\n### END HIDDEN TESTS",
                      metadata=_meta("test_square_hidden", points=2)),
    ])
    cubes = new_notebook(metadata=KERNELSPEC, cells=[
        new_code_cell("def cube(x):\n    ### BEGIN SOLUTION\n    return x ** 3\n    ### END SOLUTION",
                      metadata=_meta("cube", solution=True)),
        new_code_cell("import numpy as np\nnp.testing.assert_allclose(cube(2), 8)\n### BEGIN HIDDEN TESTS\n"
                      "np.testing.assert_allclose(cube(-3), -27, err_msg='HIDDEN_SECRET_TWO')\n"
                      "### END HIDDEN TESTS", metadata=_meta("test_cube", points=3)),
    ])
    nbformat.write(squares, root / "source" / "ps1" / "squares.ipynb")
    nbformat.write(cubes, root / "source" / "ps1" / "cubes.ipynb")


def kernel_startup_seconds() -> float:
    """How long this machine takes, right now, to import what a grading kernel's first cell imports."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cbir_kit.grade.guard"], check=True)
    return time.perf_counter() - t0


def live_scripts(page: str) -> tuple[list[str], list[str]]:
    """What a browser would run in ``page``: the text of its <script> elements and its on* attribute values."""
    from html.parser import HTMLParser

    class Finder(HTMLParser):
        def __init__(self):
            super().__init__()
            self.scripts, self.handlers, self.inside = [], [], False

        def handle_starttag(self, tag, attrs):
            self.inside = tag == "script"
            self.handlers += [v or "" for k, v in attrs if k.lower().startswith("on")]
            if self.inside:
                self.scripts.append("")

        def handle_endtag(self, tag):
            self.inside = False if tag == "script" else self.inside

        def handle_data(self, data):
            if self.inside:
                self.scripts[-1] += data

    finder = Finder()
    finder.feed(page)
    return finder.scripts, finder.handlers


def submit(course: Path, subs: Path, student: str, answers: dict) -> None:
    folder = subs / student / "ps1"
    folder.mkdir(parents=True)
    for name, code in answers.items():
        nb = nbformat.read(course / "release" / "ps1" / f"{name}.ipynb", as_version=4)
        nb.cells[0].source = code
        if name == "squares" and student == "malicious":
            nb.cells[1].source = "pass  # try to disable the visible test"
        nbformat.write(nb, folder / f"{name}.ipynb")


@pytest.mark.slow
@pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap isolation unavailable: {bwrap_status()[1]}")
def test_batch_of_five_students(tmp_path):
    course = tmp_path / "course"
    make_course(course)
    assert nbgrade.release(course, progress=False) == [course / "release" / "ps1"]
    released = (course / "release" / "ps1" / "squares.ipynb").read_text()
    assert "HIDDEN_SECRET_ONE" not in released and "return x * x" not in released

    gradebook = course / "gradebook.db"
    subs = tmp_path / "subs"
    good_sq, good_cu = "def square(x):\n    return x * x", "def cube(x):\n    return x ** 3"
    warns = "import sys, warnings\ndef square(x):\n    warnings.warn('WARNED_BUT_RIGHT')\n    print('ALSO_ON_STDERR', file=sys.stderr)\n    return x * x"
    submit(course, subs, "correct", {"squares": warns, "cubes": good_cu})   # stderr output costs nothing
    submit(course, subs, "partly", {"squares": "def square(x):\n    return 9 if x == 3 else 0",  # visible only
                                    "cubes": good_cu})
    # top-level statements of a solution cell are not run by the grader: only its definitions are
    submit(course, subs, "crashing", {"squares": "raise SystemExit(1)\ndef square(x):\n    return x * x",
                                      "cubes": "import os\ndef cube(x):\n    os._exit(3)"})
    submit(course, subs, "hanging", {"squares": "def square(x):\n    while True:\n        pass",  # cell timeout
                                     "cubes": "import signal, time\ndef cube(x):\n"
                                              "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                              "    while True:\n        time.sleep(0.1)"})  # ignores interrupts
    submit(course, subs, "linked", {"squares": good_sq, "cubes": good_cu})
    (subs / "linked" / "ps1" / "cubes.ipynb").unlink()   # a link to another student's work: refused, never followed
    (subs / "linked" / "ps1" / "cubes.ipynb").symlink_to(subs / "correct" / "ps1" / "cubes.ipynb")
    submit(course, subs, "malicious", {"squares": (
        "from IPython.display import HTML, Javascript, display\n"
        "import glob, os, shutil\n"
        "def square(x):\n"
        "    display(HTML('<b>bold</b><script>alert(\"HTML_SCRIPT\")</script><img src=x onerror=\"alert(1)\">'))\n"
        "    display(Javascript('alert(\"JS_OUTPUT\")'))\n"
        # the notebook being graded, hidden tests restored, would be here: print it
        "    print([open(f).read() for f in glob.glob('**/*.ipynb', recursive=True) + glob.glob('/sandbox/**/*.ipynb', recursive=True)])\n"
        f"    try:\n        open({str(gradebook)!r}, 'wb').write(b'A+')\n    except OSError as e:\n        print('blocked:', e)\n"
        f"    try:\n        print(open({str(course / 'source' / 'ps1' / 'squares.ipynb')!r}).read())\n"
        f"    except OSError as e:\n        print('blocked:', e)\n"
        f"    shutil.rmtree({str(course)!r}, ignore_errors=True)\n"
        "    return 0")})
    # the tests out of reach: an input transformer that turns asserts into pass, a patched comparison,
    # an answer that equals everything, a function that rebinds itself after the visible test, and one
    # that looks for the hidden tests' text wherever a kernel keeps code
    submit(course, subs, "transformer", {"squares": (
        "get_ipython().input_transformers_cleanup.append(lambda lines: [l.replace('assert', 'pass  #') for l in lines])\n"
        "def square(x):\n    return 0"), "cubes": (
        "import IPython\n"
        "def cube(x):\n"
        "    IPython.get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
        "    return 8")})
    submit(course, subs, "patcher", {"squares": (
        "def square(x):\n"
        "    class Anything:\n        def __eq__(self, other):\n            return True\n"
        "    return Anything()"), "cubes": (
        "import numpy\n"
        "def cube(x):\n"
        "    numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "    return 8")})
    submit(course, subs, "rebinder", {"squares": (
        "def square(x):\n"
        "    globals()['square'] = lambda y: 0 if y == 3 else y * y\n"
        "    return 9"), "cubes": good_cu})
    submit(course, subs, "leaker", {"squares": (
        "import gc, linecache, sys\n"
        "def square(x):\n"
        "    found = []\n"
        "    for attempt in (lambda: str(sys._getframe(1).f_code.co_consts), lambda: str(get_ipython().user_ns.get('In')),\n"
        "                    lambda: str(linecache.cache), lambda: str(get_ipython().kernel.get_parent()),\n"
        "                    lambda: str([o for o in gc.get_objects() if isinstance(o, str) and 'assert' in o])):\n"
        "        try:\n            found.append(attempt())\n        except Exception as err:\n"
        "            found.append(f'refused: {err}')\n"
        "    print('LEAKER', [('FOUND' + 'IT' if 'HIDDEN_' + 'SECRET' in text else 'clean', text[:200]) for text in found])\n"
        "    return x * x"), "cubes": good_cu})
    submit(course, subs, "swapper", {"squares": (
        "import numpy\n"
        "def square(x):\n"
        "    numpy.testing.assert_allclose.__code__ = (lambda *args, **kwargs: None).__code__\n"
        "    return x * x"), "cubes": (
        "import sys, types\n"
        "def cube(x):\n"
        "    fake = types.ModuleType('numpy.testing')\n"
        "    fake.assert_allclose = lambda *args, **kwargs: None\n"
        "    sys.modules['numpy.testing'] = fake\n"
        "    sys.modules['numpy'].testing = fake\n"
        "    return 8")})
    # limits of one notebook: its outputs (notebook_output_mb) and what it writes into its host folder (work_mb)
    submit(course, subs, "flooder", {"squares": (
        "def square(x):\n"
        "    for _ in range(40):\n        print('x' * 100_000)\n"
        "    return x * x"), "cubes": (
        "import os, sys, time\n"
        "def cube(x):\n"
        "    folder = os.path.dirname(sys.argv[sys.argv.index('-f') + 1])   # the kernel's runtime folder, on the host\n"
        "    for i in range(4):\n"
        "        with open(os.path.join(folder, f'fill{i}'), 'wb') as fh:\n"
        "            fh.write(b'0' * (30 << 20))\n"
        "    time.sleep(30)\n"
        "    return x ** 3")})

    out = tmp_path / "out"
    # time limits from a measurement on this machine now, not a guess: a loaded machine gets more
    startup = kernel_startup_seconds()
    rows = nbgrade.autograde(subs, course, out, cell_timeout=5 + 3 * startup, notebook_timeout=40 + 10 * startup,
                             progress=False,
                             limits={"notebook_output_mb": 2, "work_mb": 64})
    points = {(r["student"], r["exercise"]): r["points"] for r in rows}
    status = {(r["student"], r["notebook"]): r["status"] for r in rows}
    expected = {
        ("correct", "test_square_visible"): 1, ("correct", "test_square_hidden"): 2, ("correct", "test_cube"): 3,
        ("partly", "test_square_visible"): 1, ("partly", "test_square_hidden"): 0, ("partly", "test_cube"): 3,
        ("crashing", "test_square_visible"): 1, ("crashing", "test_square_hidden"): 2, ("crashing", "test_cube"): 0,
        ("hanging", "test_square_visible"): 0, ("hanging", "test_square_hidden"): 0, ("hanging", "test_cube"): 0,
        ("malicious", "test_square_visible"): 0, ("malicious", "test_square_hidden"): 0,
        ("malicious", "test_cube"): 0,
        ("linked", "test_square_visible"): 0, ("linked", "test_square_hidden"): 0, ("linked", "test_cube"): 0,
        ("transformer", "test_square_visible"): 0, ("transformer", "test_square_hidden"): 0,
        ("transformer", "test_cube"): 0,
        ("patcher", "test_square_visible"): 0, ("patcher", "test_square_hidden"): 0, ("patcher", "test_cube"): 0,
        ("rebinder", "test_square_visible"): 0, ("rebinder", "test_square_hidden"): 0, ("rebinder", "test_cube"): 3,
        ("leaker", "test_square_visible"): 1, ("leaker", "test_square_hidden"): 2, ("leaker", "test_cube"): 3,
        ("swapper", "test_square_visible"): 0, ("swapper", "test_square_hidden"): 0, ("swapper", "test_cube"): 0,
        ("flooder", "test_square_visible"): 0, ("flooder", "test_square_hidden"): 0, ("flooder", "test_cube"): 0,
    }
    assert points == expected
    # a kernel that ignores interrupts: nbgrader gives up on it, or the notebook timeout stops it
    hung = [r for r in rows if r["student"] == "hanging" and r["notebook"] == "cubes"][0]
    assert hung["status"] in ("timeout", "failed") and hung["reason"], hung
    assert status[("malicious", "cubes")] == "missing"
    filled = [r for r in rows if r["student"] == "flooder" and r["notebook"] == "cubes"][0]
    assert filled["status"] == "failed" and "work_mb" in filled["reason"], filled
    flooded = (out / "feedback" / "flooder" / "ps1" / "squares.html").read_text()
    assert "OutputLimit" in flooded and len(flooded) < 4_000_000
    assert status[("crashing", "cubes")] in ("graded", "failed")   # os._exit in the test: the kernel died
    assert status[("correct", "squares")] == "graded"

    # the gradebook (checked below through nbgrader) and the course survive; the CSV matches the rows
    assert (course / "source" / "ps1" / "squares.ipynb").is_file()
    with open(out / "grades.csv") as fh:
        assert [r["points"] for r in csv.DictReader(fh)] == [str(r["points"]) for r in rows]
    assert list(rows[0]) == nbgrade.GRADE_COLUMNS
    row = {(r["student"], r["exercise"]): r for r in rows}
    assert row["partly", "test_square_hidden"]["failed_in"] == "hidden" and row["partly", "test_square_hidden"]["error"]
    assert row["partly", "test_square_visible"]["failed_in"] == "" and row["correct", "test_cube"]["error"] == ""
    assert all(isinstance(r["seconds"], float) and r["seconds"] > 0 for r in rows if r["status"] == "graded")
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{gradebook}") as gb:
        assert gb.find_submission("ps1", "correct").score == 6
        assert gb.find_submission("ps1", "malicious").score == 0

    # feedback: per student, no hidden test code or message, a verdict instead
    pages = sorted(out.glob("feedback/*/ps1/*.html"))
    assert {p.parent.parent.name for p in pages} >= {"correct", "partly", "crashing", "hanging", "malicious",
                                                     "transformer", "patcher", "rebinder", "leaker"}
    for page in pages:
        text = page.read_text()
        assert "HIDDEN_SECRET" not in text and "square(-4)" not in text and "cube(-3)" not in text
    assert "Hidden tests failed (AssertionError)" in (out / "feedback" / "partly" / "ps1" / "squares.html").read_text()
    sentences = load_catalogue(REPO / "notebooks" / "misconceptions.toml")
    for page, key in (("cubes", "tampering"), ("squares", "not-plain-result")):
        text = html.unescape((out / "feedback" / "patcher" / "ps1" / f"{page}.html").read_text())
        assert sentences[key][:60] in text, (page, key)
    leaked = (out / "feedback" / "leaker" / "ps1" / "squares.html").read_text()
    assert "LEAKER" in leaked and "refused" in leaked and "FOUNDIT" not in leaked   # refused, or found nothing
    assert "blocked:" in (out / "feedback" / "malicious" / "ps1" / "squares.html").read_text()
    assert "WARNED_BUT_RIGHT" in (out / "feedback" / "correct" / "ps1" / "squares.html").read_text()
    linked = [r for r in rows if r["student"] == "linked"]
    assert {r["status"] for r in linked} == {"failed"} and all("cubes.ipynb" in r["reason"] for r in linked)
    assert not (course / "submitted" / "linked").exists() or not any((course / "submitted" / "linked").rglob("*.ipynb"))
    page = (out / "feedback" / "malicious" / "ps1" / "squares.html").read_text()
    assert "<b>bold</b>" in page, "harmless HTML output is kept"
    # the code cell shows the student's source as text; none of it may become a live script or event handler
    scripts, handlers = live_scripts(page)
    assert not [s for s in scripts if "HTML_SCRIPT" in s or "JS_OUTPUT" in s], scripts
    assert not [h for h in handlers if "alert" in h], handlers


def test_course_errors(tmp_path):
    from cbir_kit.errors import CbirError
    with pytest.raises(CbirError, match="no nbgrader_config.py"):
        nbgrade.release(tmp_path)
    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\n")
    with pytest.raises(CbirError, match="no source/ folder"):
        nbgrade.release(tmp_path)
    (tmp_path / "course.toml").write_text('notebooks = "nowhere"\n')
    with pytest.raises(CbirError, match="nowhere.*is not a folder"):
        nbgrade.release(tmp_path)
    (tmp_path / "course.toml").write_text('profile = "ci"\ncolour = "red"\n')
    with pytest.raises(CbirError, match="unknown key.*colour"):
        nbgrade.release(tmp_path)


@pytest.mark.slow
def test_release_the_real_course_from_a_fresh_clone(tmp_path):
    """grading/ and notebooks/ as a clone has them: release builds source/ itself (course.toml), no manual step."""
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    course = tmp_path / "grading"
    course.mkdir()
    for name in ("nbgrader_config.py", "course.toml"):
        shutil.copy(REPO / "grading" / name, course)
    notebooks = sorted((tmp_path / "notebooks").glob("[0-9]*.ipynb"))
    released = nbgrade.release(course, progress=False)
    assert [p.name for p in released] == [nb.stem for nb in notebooks]
    for nb in notebooks:
        assert (course / "source" / nb.stem / nb.name).read_bytes() == nb.read_bytes()
        student = (course / "release" / nb.stem / nb.name).read_text()
        assert "BEGIN HIDDEN TESTS" not in student and "### BEGIN SOLUTION" not in student


def test_course_settings_give_each_kernel_its_profile_and_data(tmp_path):
    from cbir_kit.grade.course import load_course
    (tmp_path / "data" / "corel1k").mkdir(parents=True)
    (tmp_path / "nb").mkdir()
    (tmp_path / "course.toml").write_text(
        'notebooks = "nb"\nprofile = "full"\ndata_root = "data"\n'
        '[datasets.full]\n"01_features" = ["corel1k", "roxford5k"]\n')
    course = load_course(tmp_path)
    env, datasets, missing = course.kernel_data("01_features")
    assert env == {"CBIR_PROFILE": "full"}
    assert datasets == {"corel1k": str((tmp_path / "data" / "corel1k").resolve())}
    assert missing == ["roxford5k"]
    assert course.kernel_data("02_search") == ({"CBIR_PROFILE": "full"}, {}, [])


@pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap isolation unavailable: {bwrap_status()[1]}")
def test_the_grading_kernels_environment_writes_nothing_to_stderr(tmp_path):
    """What a notebook imports first (scikit-learn, joblib, torch, faiss, cbir_kit) is silent in the sandbox:
    nbgrader would score any test cell that writes to stderr as 0 (joblib used to warn there)."""
    import subprocess
    import sys

    from cbir_kit.grade.kernel import kernel_command

    (tmp_path / "nb").mkdir()
    (tmp_path / "runtime").mkdir()
    (tmp_path / "conn.json").write_text("{}")
    settings = {"mode": "bwrap", "limits": {"wall_s": 120}, "work_dir": str(tmp_path / "work"),
                "runtime_dir": str(tmp_path / "runtime"), "threads": 1, "env": {"CBIR_PROFILE": "ci"}, "datasets": {}}
    cmd, cwd, env = kernel_command(str(tmp_path / "conn.json"), [], settings, tmp_path / "nb")
    at = cmd.index("ipykernel_launcher") - 2          # [python, -m, ipykernel_launcher, ...] runs last
    code = ("import os, sklearn, joblib, torch, faiss, cbir_kit, cbir_kit.pipeline.profile\n"
            "from sklearn.manifold import TSNE\n"
            "print(sum(joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(4))), os.environ['CBIR_PROFILE'])")
    r = subprocess.run(cmd[:at] + [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["6", "ci"]
    assert r.stderr == "", f"the grading kernel's environment writes to stderr: {r.stderr[:500]}"


def test_submission_text_cannot_become_a_formula_or_break_a_plot():
    from cbir_kit.grade.text import plot_label, spreadsheet_safe
    assert spreadsheet_safe("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert spreadsheet_safe("-2+3") == "'-2+3" and spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
    assert spreadsheet_safe("alice") == "alice" and spreadsheet_safe(2.5) == 2.5
    assert len(spreadsheet_safe("x" * 20_000_000)) == 500
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.annotate(plot_label("$\\frac{$"), (0, 0))      # unparsable mathtext, were it not escaped
    fig.canvas.draw()
    plt.close(fig)
    assert len(plot_label("n" * 100)) == 40
