"""What the grading kernel runs of a student's cell (isolate.definitions), and the limits of one sandbox.

The guard itself (an audit hook cannot be removed once added) is tested end to end in a real grading
kernel: tests/test_grading_nbgrader.py grades students who attack the tests.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

from cbir_kit.grade.cgroup import groups_available  # noqa: E402
from cbir_kit.grade.guard import is_plain  # noqa: E402
from cbir_kit.grade.isolate import SKIPPED, definitions  # noqa: E402
from cbir_kit.grade.sandbox import Limits, Sandbox, SandboxSpec, bwrap_status, kill_group, sandbox_uid  # noqa: E402


def test_definitions_keep_imports_functions_classes_and_constants():
    cell = '''"""My answer."""
import numpy as np
from pathlib import Path
K = 10
NAMES: tuple = ("a", "b")
def knn(q, g, k=K, *, metric: str = "ip") -> np.ndarray:
    return np.argsort(-(q @ g.T), axis=1)[:, :k]
class Index:
    """An index."""
    size = 0
    def fit(self, x):
        return self
'''
    assert definitions(cell) == cell


@pytest.mark.parametrize("statement", [
    "print('hello')",
    "get_ipython().input_transformers_cleanup.append(lambda lines: [])",
    "np.testing.assert_allclose = lambda *a, **k: None",
    "x = compute()",
    "@install_hook()\ndef f():\n    pass",
    "def f(x=patch()):\n    pass",
    "def f(x) -> patch():\n    pass",
    "class A(metaclass=Evil):\n    pass",
    "class A:\n    patch()",
    "class A(make_base()):\n    pass",
    "from .helper import f",
    "for i in range(3):\n    pass",
    "with open('x') as fh:\n    pass",
    "try:\n    import torch\nexcept ImportError:\n    pass",
    "if True:\n    def f():\n        pass",
    "globals()['x'] = 1",
    "a.b = 1",
])
def test_definitions_skip_everything_that_runs_code(statement):
    kept = definitions(statement)
    assert kept.startswith(SKIPPED), kept
    compile(kept, "<test>", "exec")   # a comment: valid, runs nothing


def test_definitions_drop_magics_and_report_syntax_errors():
    assert definitions("%matplotlib inline\n!pip install x\ndef f():\n    return 1\n") == "def f():\n    return 1\n"
    broken = definitions("def f(:\n    pass")
    with pytest.raises(SyntaxError, match="line 1"):
        exec(compile(broken, "<test>", "exec"), {})


def test_plain_results_are_exact_builtin_and_numpy_types():
    import numpy as np
    import torch

    assert is_plain({"a": [1, 2.0, (np.float32(1), np.arange(3))], "b": None, 3: {"x", "y"}})
    assert is_plain(torch.zeros(2)) and is_plain(np.array([[1, 2]], dtype=object))

    class Anything:
        def __eq__(self, other):
            return True

    class MyFloat(float):
        pass

    class MyArray(np.ndarray):
        pass

    for odd in (Anything(), [1, Anything()], {"k": Anything()}, MyFloat(1.0), np.zeros(2).view(MyArray),
                np.array([Anything()], dtype=object), (i for i in range(2))):
        assert not is_plain(odd), odd


def run_confined(box: Sandbox, code: str) -> tuple[int, bytes]:
    """``(exit status, output)`` of Python ``code`` run in ``box``; its processes and control group removed after."""
    with tempfile.TemporaryDirectory() as work:
        proc = box.popen([sys.executable, "-c", code], SandboxSpec(), Path(work),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=120)
        kill_group(proc)
    box.close()
    return proc.returncode, out


def test_each_sandbox_gets_a_user_of_its_own():
    assert len({sandbox_uid() for _ in range(50)}) == 50


@pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap unavailable: {bwrap_status()[1]}")
def test_tmp_is_size_limited():
    returncode, out = run_confined(Sandbox(Limits(tmp_mb=16), "bwrap"), "open('/tmp/big', 'wb').write(b'0' * (40 << 20))")
    assert returncode != 0 and b"No space left" in out, out[-500:]


@pytest.mark.skipif(not groups_available()[0], reason=f"no control group: {groups_available()[1]}")
@pytest.mark.skipif(not bwrap_status()[0], reason=f"bubblewrap unavailable: {bwrap_status()[1]}")
def test_memory_is_limited_for_the_whole_sandbox_not_per_process():
    # four processes of 300 MB each stay under the per-process limit (1 GB) but not under 600 MB together
    box = Sandbox(Limits(group_memory_mb=600, memory_mb=1024, nproc=64), "bwrap")
    assert "control group" in box.note
    code = ("import os\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        block = bytearray(300 << 20)\n        for j in range(0, len(block), 4096):\n"
            "            block[j] = 1\n        import time; time.sleep(2)\n        os._exit(0)\n"
            "    kids.append(pid)\nprint('STATUSES', [os.waitpid(p, 0)[1] for p in kids])\n")
    _, out = run_confined(box, code)
    statuses = eval(out.decode().split("STATUSES", 1)[1])
    assert any(s != 0 for s in statuses), statuses   # the kernel's OOM killer stopped at least one

