"""Instructor side: the retrieval challenge, every submission run on a hidden query split, timed and scored.

A submission is a Python module (``<student>.py``, ``<student>/submission.py``, the only ``.py``
in ``<student>/``, or a notebook ``<student>/*.ipynb`` whose code cells are joined into one) with::

    build(gallery_paths: list[str]) -> None
    retrieve(query_paths: list[str], k: int) -> list[list[int]]   # ranked gallery indices per query

``k`` is the configured cap on the answer length; with ``k = 0`` in the config (the default,
thresholded retrieval) there is no cap and ``retrieve`` receives ``k = len(gallery_paths)``: each
query's list holds every gallery image the system judges relevant, best first, of any length
from 0 to the gallery size.  A 2-D integer array, or a list of 1-D integer arrays, is accepted too.

What the grader does, per grading session (one ``cbir grade challenge``):

1. Stages the dataset: every gallery and query image is written as a new file under a neutral
   name (``gallery/00017.jpg``) in a random order, re-encoded with an invisible per-session change,
   with one timestamp and one mode for all (:func:`stage_dataset`), so neither names, order,
   inodes, times nor byte hashes of the public files reveal a label.  The order and the change
   come from a fresh secret per session (config ``seed = "secret"``), recorded in ``results.json``
   as ``staging_seed``; a number there reproduces a session.  The labels stay in this process only.
   The query folder is left unreadable (mode 000).
2. Runs the baseline (:mod:`cbir_kit.grade.baseline`) and then each submission, one *run* at a
   time.  A run is a fresh sandboxed process (:mod:`cbir_kit.grade.sandbox`, talking to it over
   pipes) that imports the module, calls ``build`` and then ``retrieve`` once each; nothing it
   computed or wrote survives into the next run (new process, new private working directory
   with ``$HOME`` and ``$TMPDIR``, new ``/tmp`` under bubblewrap; in rlimits mode the process
   could still write outside its working directory).  Times are taken from this side of the
   pipe: ``import_s``, ``build_s`` = import + build call (work done at import time is build
   time) and ``retrieve_s``.  The queries stay unreadable while the process imports and builds: the
   folder becomes readable (0755) just before ``retrieve`` is sent and unreadable again once the
   process has ended.  First ``warmup`` untimed runs, then ``repeats`` timed runs, then more
   timed runs while ``(max - min) / median`` of their times T exceeds ``max_spread``, up to
   ``max_repeats`` (:func:`cbir_kit.grade.scoring.needs_another_run`); the medians over the
   timed runs are reported, with the number of timed runs and their spread.
3. Receives every run's answer as packed int32 bytes (:func:`cbir_kit.grade.runner.pack_answer`),
   checks it (one list per query, at most k distinct gallery indices, :func:`check_packed`) and
   computes precision, recall, F1 and mAP (:mod:`cbir_kit.evaluation.metrics`).  The submission is reported
   with the metrics of its *worst* run (lowest quality, warm-up runs included) and
   ``answers_identical`` says whether all runs returned the same answer; then the score
   (:mod:`cbir_kit.grade.scoring`).  Anything that goes wrong in any run - an exception, a
   timeout, a resource limit, too much output, a malformed answer - fails that submission with a
   reason naming the run, and score 0; the others are unaffected.

With a Dask cluster, ``run_challenge(..., cluster="local:4")`` (any spec of :mod:`cbir_kit.cluster`),
correctness is checked in parallel and timing stays serial, in two phases:

1. **Correctness, in parallel** (:func:`check_task`, one task per submission, not the baseline):
   what the serial grader does up to the end of its first run (:func:`first_run`):
   prepare the submission in a scratch folder of its own, run it once in a fresh sandboxed process
   (import, build, retrieve) and check and evaluate its answer against the hidden labels.  The
   :class:`~cbir_kit.grade.sandbox.Sandbox` is built inside the task, on the worker, from the
   config's limits and the sandbox mode this process resolved (a worker without bubblewrap,
   where this process has it, stops the grading rather than run with less isolation).  Each task
   sees its own copy of the staged folder (new folders, hard links to the staged files), because
   a run makes the query folder readable just before ``retrieve`` and unreadable again after: on
   one shared folder, one submission's ``retrieve`` would show the queries to another's ``build``.
   A submission that fails here is reported failed with the serial grader's reason for that run
   (``run 1 (warm-up): retrieve raised ValueError: ...``) and its output, and is not timed.
2. **Timing, serial, on this machine** (the driver): the baseline first, then each submission
   that passed, one at a time, in the same session, through the serial grader's own
   :func:`grade_batch` (warm-up runs, timed runs until their spread is
   small, every answer checked again).  Speed is part of the score, measured against the
   baseline's time: runs in parallel would contend for the same cores, caches and memory
   bandwidth, and a submission's time would depend on what ran beside it.  So timing is never
   spread over the cluster; a ``local:N`` cluster is shut down before it starts.

For the same reason a run that a wall-clock limit ended in phase 1 (``timing.build_timeout_s``,
``timing.retrieve_timeout_s``, ``limits.wall_s``) is not taken as the verdict: the machine was
shared, so that submission goes on to phase 2 like one that passed, where the serial grader
decides.  A run ended by anything else - an exception, a malformed answer, the CPU-time, memory
or output limit - fails the submission in phase 1.

The leaderboard and ``results.json`` are those of the serial grader (``cluster="none"``): the same
results in the same order, with the same statuses, reasons and metrics; only the times differ.

The hidden labels travel to the workers (the tasks evaluate the answers there), never into a
sandbox.  Workers of a ``LocalCluster`` share this machine's disk.  On several machines, the
staging folder (made under ``$TMPDIR``: set it to a folder on shared storage) and the submissions
folder must be on storage every worker sees at the same path; a worker that cannot see them stops
the grading with an error naming the submission, rather than fail the student.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..cluster import cluster_client, gather_checked, parse_cluster
from ..errors import CbirError
from ..evaluation.metrics import mean_average_precision, relevance_matrix, set_metrics
from . import scoring
from .scoring import BASELINE_NAME
from .runner import pack_answer
from .sandbox import Limits, Sandbox, SandboxSpec, kill_group

RUNNER = Path(__file__).with_name("runner.py")
BASELINE = Path(__file__).with_name("baseline.py")
SUB_DIR = "/sandbox/submission"
DATA_DIR = "/sandbox/data"
MAX_REPLY_BYTES = 256 * 1024 * 1024


@dataclass
class Staged:
    """The neutral copy of a query/gallery split that submissions see, and its hidden labels."""

    folder: Path
    gallery: list[str]       # sandbox paths
    query: list[str]
    gallery_labels: np.ndarray
    query_labels: np.ndarray
    n_relevant: np.ndarray


@dataclass
class Result:
    student: str
    status: str = "ok"            # ok | failed
    reason: str = ""
    timings: dict = field(default_factory=dict)   # medians over the timed runs, "runs", "spread"
    metrics: dict = field(default_factory=dict)   # of the worst run
    scores: dict = field(default_factory=dict)
    answers_identical: bool | None = None         # every run returned the same answer (None: failed)
    runs: list = field(default_factory=list)      # per run: run, timed, import_s, build_s, retrieve_s, quality
    output: str = ""


STAMP = 946_684_800   # 2000-01-01 00:00 UTC: the time of every staged file, so timestamps tell nothing
JPEG_SUFFIXES = (".jpg", ".jpeg")


def staging_seed(setting) -> int:
    """The seed that orders and varies the staged images: ``"secret"`` draws a fresh one for this run."""
    return secrets.randbits(63) if setting == "secret" else int(setting)


def _stage_image(ref, folder: Path, stem: str, rng: np.random.Generator) -> str:
    """Write image ``ref`` as a new file ``folder/stem.(jpg|png)`` that carries nothing but pixels.

    The image is decoded, the lowest bit of 16 pixels drawn from ``rng`` is flipped (invisible,
    different in every run) and it is encoded again (JPEG quality 95 for JPEG sources, else PNG), so
    no byte hash of the public file matches.  A new file, not a link: inode, link count, time and
    mode say nothing about the original, and the instructor's file is never touched.  A file that
    does not decode is copied as it is (submissions must cope with broken images).
    """
    from ..datasets.images import ImageLoadError, open_image

    is_path = isinstance(ref, (str, os.PathLike))
    suffix = Path(ref).suffix.lower() if is_path else ".png"
    try:
        pixels = np.array(open_image(ref))
    except ImageLoadError:
        dest = folder / f"{stem}{suffix}"
        shutil.copyfile(ref, dest)
    else:
        h, w = pixels.shape[:2]
        ys, xs, cs = rng.integers(0, h, 16), rng.integers(0, w, 16), rng.integers(0, 3, 16)
        pixels[ys, xs, cs] ^= 1
        jpeg = suffix in JPEG_SUFFIXES
        dest = folder / f"{stem}{'.jpg' if jpeg else '.png'}"
        Image.fromarray(pixels).save(dest, **({"quality": 95} if jpeg else {}))
    os.chmod(dest, 0o644)
    os.utime(dest, (STAMP, STAMP))
    return dest.name


def stage_dataset(ds, folder: Path, seed: int) -> Staged:
    """Write the split under neutral names in a seeded order, re-encoded (see the module docstring)."""
    if ds.leave_one_out or ds.gnd is not None:
        raise CbirError(f"dataset {ds.name} is leave-one-out or revisitop; the challenge needs a plain "
                        "query/gallery split with labels (e.g. demo, animals10, csv:PATH)")
    rng = np.random.default_rng(seed)
    out = {}
    for split, refs in (("gallery", ds.gallery), ("query", ds.query)):
        order = rng.permutation(len(refs))
        (folder / split).mkdir(parents=True)
        paths = []
        for new, old in enumerate(order):   # written in the new order: inode order follows the neutral names
            name = _stage_image(refs[old], folder / split, f"{new:05d}", rng)
            paths.append(f"{DATA_DIR}/{split}/{name}")
        out[split] = (paths, order)
    folder.chmod(0o755)
    (folder / "gallery").chmod(0o755)
    show_queries(folder, False)
    g_paths, g_order = out["gallery"]
    q_paths, q_order = out["query"]
    g_labels, q_labels = ds.gallery_labels[g_order], ds.query_labels[q_order]
    values, counts = np.unique(g_labels, return_counts=True)
    lookup = dict(zip(values.tolist(), counts.tolist()))
    n_rel = np.array([lookup.get(lab, 0) for lab in q_labels.tolist()])
    return Staged(folder, g_paths, q_paths, g_labels, q_labels, n_rel)


def show_queries(folder: Path, visible: bool) -> None:
    """Make the staged ``query`` folder readable (0755) or unreadable (mode 000: no listing, no opening).

    Hidden from staging on; :func:`_run_process` shows it just before it sends ``retrieve`` and hides
    it again once the process has ended.  Under bubblewrap the data is bound read-only, so the
    submission cannot chmod it back even when it runs as the folder's owner (a grader that is not
    root).  In rlimits mode it runs as the grader's user on the host folder and could.
    """
    (folder / "query").chmod(0o755 if visible else 0o000)


def notebook_to_module(notebook: Path, dest: Path) -> None:
    """Join a notebook's code cells into one module; IPython magics and shell lines are dropped."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    keep = []
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "code":
            if not isinstance(cell.get("source"), str):
                raise CbirError(f"{notebook.name}: code cell {i} has no text source (got "
                                f"{type(cell.get('source')).__name__}); save the notebook with Jupyter")
            lines = [ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
            keep.append("\n".join(lines))
    dest.write_text("\n\n".join(keep) + "\n")


def find_submissions(folder: Path) -> dict[str, Path]:
    """``student -> entry path`` for every submission in ``folder`` (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CbirError(f"submissions folder {folder} does not exist")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix in (".py", ".ipynb"):
            found[entry.stem] = entry
        elif entry.is_dir():
            candidates = [entry / "submission.py"] if (entry / "submission.py").is_file() else \
                sorted(entry.glob("*.py")) or sorted(p for p in entry.glob("*.ipynb") if "checkpoint" not in p.name)
            if len(candidates) == 1:
                found[entry.name] = candidates[0]
            else:
                found[entry.name] = entry  # reported as failed: no single entry point
    if not found:
        raise CbirError(f"no submissions in {folder}: expected <student>.py, <student>/submission.py "
                        "or <student>/<notebook>.ipynb")
    return found


def _prepare_submission(entry: Path, dest: Path, own_dir: bool) -> Path:
    """Copy the submission into ``dest`` and return its module path there.

    ``own_dir``: the entry sits in the student's own folder, whose other files (helpers, small
    weights) come along; a single top-level file comes alone.
    """
    if entry.is_dir():
        raise CbirError(f"{entry} holds no single entry point; name it submission.py")
    if own_dir:
        shutil.copytree(entry.parent, dest, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.ipynb"))
    else:
        dest.mkdir(parents=True)
    if entry.suffix == ".ipynb":
        notebook_to_module(entry, dest / "submission.py")
    elif entry.name != "submission.py" or not own_dir:
        shutil.copy(entry, dest / "submission.py")
    for root, _, files in os.walk(dest):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(Path(root) / f, 0o644)
    return dest / "submission.py"


class _Session:
    """One sandboxed runner process: send a command, wait for its reply, watch output and time."""

    def __init__(self, proc: subprocess.Popen, reply_fd: int, limits: Limits):
        self.proc = proc
        self.reply_fd = reply_fd
        self.limits = limits
        self.deadline = time.monotonic() + limits.wall_s
        self.out_head = bytearray()
        self.out_total = 0
        self.buf = bytearray()
        self.stopped = threading.Event()   # tells the threads that write commands to stop
        self.writers: list[threading.Thread] = []

    def output(self) -> str:
        text = self.out_head.decode("utf-8", "replace")
        if self.out_total > len(self.out_head):
            text += f"\n[... {self.out_total - len(self.out_head)} more bytes not kept]"
        return text

    def request(self, cmd: dict | None, timeout: float, setting: str) -> tuple[dict, float]:
        """Send ``cmd`` (None: only wait for the first reply); return ``(reply, seconds)``.

        ``setting`` names the limit ``timeout`` comes from, for the reason.  Raises :class:`_Failure`.
        """
        op = cmd["op"] if cmd else "start"
        if cmd:
            self._send((json.dumps(cmd) + "\n").encode())
        start = time.perf_counter()
        limit = min(time.monotonic() + timeout, self.deadline)
        out_fd = self.proc.stdout.fileno()
        open_fds = {self.reply_fd, out_fd}
        reply = None
        while True:
            if reply is None and (nl := self.buf.find(b"\n")) >= 0:
                line, self.buf = bytes(self.buf[:nl]), self.buf[nl + 1:]
                reply = parse_reply(line)
                need = reply.get("payload_bytes", 0)
                if not isinstance(need, int) or not 0 <= need <= MAX_REPLY_BYTES:
                    raise _Failure("malformed reply from the submission process: bad payload size")
            if reply is not None and len(self.buf) >= need:
                reply["payload"], self.buf = bytes(self.buf[:need]), self.buf[need:]
                return reply, time.perf_counter() - start
            left = limit - time.monotonic()
            if left <= 0:
                which = f"limits.wall_s ({self.limits.wall_s:g} s a run)" if limit >= self.deadline else setting
                raise _Failure(f"{op} exceeded {which}", wall_clock=True)
            if not open_fds:
                raise _Failure(self._death_reason(f"during {op}"))
            ready, _, _ = select.select(list(open_fds), [], [], min(left, 1.0))
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                if fd == out_fd:
                    self.out_total += len(chunk)
                    keep = 20_000 - len(self.out_head)
                    if keep > 0:
                        self.out_head += chunk[:keep]
                    if self.out_total > self.limits.output_bytes:
                        raise _Failure(f"output limit exceeded: printed more than {self.limits.output_bytes} bytes")
                else:
                    self.buf += chunk
                    if len(self.buf) > MAX_REPLY_BYTES:
                        raise _Failure("reply larger than the grader accepts")
            if self.proc.poll() is not None and not ready:
                open_fds.clear()

    def _death_reason(self, when: str) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"the submission closed its channel {when}"
        sig = -rc if rc < 0 else (rc - 128 if rc > 128 else 0)
        names = {signal.SIGXCPU: "CPU-time limit exceeded", signal.SIGXFSZ: "file-size limit exceeded",
                 signal.SIGKILL: "killed (CPU-time or memory limit)", signal.SIGSEGV: "crashed (segmentation fault)"}
        if sig:
            return f"process died {when}: {names.get(sig, f'signal {sig}')}"
        return f"process exited {when} with status {rc}"

    def _send(self, data: bytes) -> None:
        """Write ``data`` to the process's stdin from a thread of its own.

        A process that stops reading (a pipe holds 64 KiB; the gallery's paths are more) blocks that
        thread, never the grader: the reply's time limit still applies, and :meth:`close` kills the
        process, which ends the write.  A process that died shows when its reply does not come.
        """
        fd = self.proc.stdin.fileno()

        def write() -> None:
            view = memoryview(data)
            while view and not self.stopped.is_set():
                try:
                    if select.select([], [fd], [], 0.2)[1]:
                        view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
                except OSError:      # the process is gone
                    return

        os.set_blocking(fd, False)
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        self.writers.append(writer)

    def close(self) -> None:
        if self.proc.poll() is None:
            self._send(b'{"op": "exit"}\n')
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc)
        self.proc.wait()
        self.stopped.set()
        for writer in self.writers:
            writer.join()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        os.close(self.reply_fd)


def parse_reply(line: bytes) -> dict:
    """One JSON reply line of the runner; anything else (deeply nested, not an object) is a :class:`_Failure`."""
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):   # RecursionError: e.g. 200,000 nested "["
        raise _Failure("malformed reply from the submission process") from None
    if not isinstance(reply, dict):
        raise _Failure("malformed reply from the submission process: not a JSON object")
    return reply


class _Failure(Exception):
    """A run failed for the submission's doing; ``wall_clock``: a wall-clock limit ended it (load may share the blame)."""

    def __init__(self, message: str = "", wall_clock: bool = False):
        super().__init__(message)
        self.wall_clock = wall_clock


def answer_cap(cfg: dict, n_gallery: int) -> int:
    """The k that ``retrieve`` receives: the configured cap, or the gallery size when ``k = 0``."""
    return min(cfg["k"], n_gallery) if cfg["k"] > 0 else n_gallery


def check_packed(n_rows, n_ids, payload: bytes, n_queries: int, n_gallery: int, k: int) -> np.ndarray:
    """Validate a packed answer (:func:`~cbir_kit.grade.runner.pack_answer`); return it as a (Q, L) array.

    ``L`` is the longest list; shorter lists are padded with -1.  Raises :class:`_Failure` naming
    the first problem: wrong number of lists, a list longer than ``k``, an index outside
    ``0 .. n_gallery - 1``, an index twice in one list, or header and bytes that disagree.
    """
    if not (isinstance(n_rows, int) and isinstance(n_ids, int) and isinstance(payload, (bytes, bytearray))):
        raise _Failure("malformed answer from the submission process")
    if n_rows != n_queries:
        raise _Failure(f"retrieve() must return one list per query ({n_queries}); got {n_rows}")
    if n_ids < 0 or len(payload) != 4 * (n_rows + n_ids):
        raise _Failure("malformed answer from the submission process: sizes do not match the header")
    lengths = np.frombuffer(payload, np.int32, count=n_rows).astype(np.int64)
    ids = np.frombuffer(payload, np.int32, offset=4 * n_rows).astype(np.int64)
    if (lengths < 0).any() or lengths.sum() != n_ids:
        raise _Failure("malformed answer from the submission process: list lengths do not match the header")
    too_long = np.flatnonzero(lengths > k)
    if too_long.size:
        q = int(too_long[0])
        raise _Failure(f"retrieve() returned {lengths[q]} results for query {q}; at most k={k}")
    rows = np.repeat(np.arange(n_rows), lengths)
    outside = np.flatnonzero((ids < 0) | (ids >= n_gallery))
    if outside.size:
        raise _Failure(f"retrieve() returned a gallery index outside 0..{n_gallery - 1} "
                       f"for query {rows[outside[0]]}")
    keys = np.sort(rows * n_gallery + ids)
    repeated = np.flatnonzero(keys[1:] == keys[:-1])
    if repeated.size:
        raise _Failure(f"retrieve() returned the same gallery index twice for query {keys[repeated[0]] // n_gallery}")
    starts = np.cumsum(lengths) - lengths
    padded = np.full((n_rows, int(lengths.max(initial=0))), -1, dtype=np.int64)
    padded[rows, np.arange(n_ids) - np.repeat(starts, lengths)] = ids
    return padded


def _check_answer(answer, n_queries: int, n_gallery: int, k: int) -> np.ndarray:
    """:func:`check_packed` of an in-process answer (a list of ranked lists or a 2-D array)."""
    if not isinstance(answer, list) and getattr(answer, "ndim", 0) != 2:
        raise _Failure(f"retrieve() must return one list per query ({n_queries}); got {type(answer).__name__}")
    try:
        return check_packed(*pack_answer(answer), n_queries, n_gallery, k)
    except (TypeError, ValueError, OverflowError) as err:
        raise _Failure(f"retrieve() returned something that is not lists of gallery indices: {err}") from None


def evaluate_answer(ids: np.ndarray, staged: Staged) -> dict:
    """precision, recall, F1 (of the returned sets) and mAP (of the returned rankings) against the hidden labels.

    ``ids``: (Q, L) gallery indices padded with -1.  An empty list scores 0 on every metric;
    AP divides by all R relevant gallery images, so relevant images not returned count as missed.
    """
    rel = relevance_matrix(ids, staged.query_labels, staged.gallery_labels)
    out = set_metrics(rel.sum(axis=1), (ids >= 0).sum(axis=1), staged.n_relevant)
    out["mAP"] = mean_average_precision(rel, staged.n_relevant)
    return out


def _run_process(module: Path, staged: Staged, sandbox: Sandbox, cfg: dict, work: Path, label: str,
                 outputs: list[str]) -> tuple[dict, np.ndarray]:
    """One run in a fresh sandboxed process: import, build, retrieve; return ``(times, checked answer)``.

    ``times``: ``import_s``, ``build_s`` (import + build call) and ``retrieve_s``.  Import and build
    share ``timing.build_timeout_s``.  The queries are readable only from just before ``retrieve``
    is sent until the process has ended.  The process's output is added to ``outputs``.
    """
    work.mkdir()
    threads = str(cfg["threads"] or _cores())
    spec = SandboxSpec(ro={str(module.parent): SUB_DIR, str(staged.folder): DATA_DIR,
                           str(RUNNER.resolve()): "/sandbox/runner.py"},
                       env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    read_fd, write_fd = os.pipe()
    try:
        proc = sandbox.popen([sys.executable, "-u", "/sandbox/runner.py", f"{SUB_DIR}/submission.py", str(write_fd)],
                             spec, work, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             pass_fds=(write_fd,))
    finally:
        os.close(write_fd)
    gallery = [sandbox.host_path(p, spec, work) for p in staged.gallery]
    query = [sandbox.host_path(p, spec, work) for p in staged.query]
    k = answer_cap(cfg, len(staged.gallery))
    timing = cfg["timing"]
    build_limit = f"timing.build_timeout_s ({timing['build_timeout_s']:g} s for import + build)"
    session = _Session(proc, read_fd, sandbox.limits)
    try:
        started, _ = session.request(None, timing["build_timeout_s"], build_limit)
        _raise_if_error(started, "start")
        import_s = _timed(session, {"op": "import"}, timing["build_timeout_s"], build_limit)
        build_s = _timed(session, {"op": "build", "paths": gallery}, timing["build_timeout_s"] - import_s, build_limit)
        show_queries(staged.folder, True)
        reply, retrieve_s = session.request({"op": "retrieve", "paths": query, "k": k}, timing["retrieve_timeout_s"],
                                            f"timing.retrieve_timeout_s ({timing['retrieve_timeout_s']:g} s)")
        _raise_if_error(reply, "retrieve")
        ids = check_packed(reply.get("rows"), reply.get("ids"), reply.get("payload"),
                           len(staged.query), len(staged.gallery), k)
    finally:
        session.close()
        show_queries(staged.folder, False)
        shutil.rmtree(work, ignore_errors=True)
        if text := session.output():
            outputs.append(f"--- {label} ---\n{text}")
    return {"import_s": import_s, "build_s": import_s + build_s, "retrieve_s": retrieve_s}, ids


def _timed(session: _Session, cmd: dict, timeout: float, setting: str) -> float:
    """Seconds from sending ``cmd`` to its successful reply."""
    reply, seconds = session.request(cmd, timeout, setting)
    _raise_if_error(reply, cmd["op"])
    return seconds


def _timed_totals(runs: list[dict], cfg: dict) -> list[float]:
    """T (:func:`cbir_kit.grade.scoring.total_time`) of each timed run so far."""
    return [scoring.total_time(r, cfg) for r in runs if r["timed"]]


def _median_timings(runs: list[dict], cfg: dict, n_queries: int) -> dict:
    """Medians over the timed runs, ``retrieve_ms_per_query``, the number of timed ``runs`` and their ``spread``."""
    timed = [r for r in runs if r["timed"]]
    out = {key: statistics.median(r[key] for r in timed) for key in ("import_s", "build_s", "retrieve_s")}
    out["retrieve_ms_per_query"] = 1000 * out["retrieve_s"] / max(1, n_queries)
    out["runs"] = len(timed)
    out["spread"] = scoring.spread(_timed_totals(runs, cfg))
    return out


def run_label(n: int, warmup: int) -> str:
    """The name of run ``n`` (from 1) in reasons and output: ``run 1 (warm-up)``, ``run 3 (timed)``."""
    return f"run {n} ({'timed' if n > warmup else 'warm-up'})"


def _prepare(result: Result, entry: Path, scratch: Path, own_dir: bool) -> Path | None:
    """:func:`_prepare_submission` into ``scratch/submission``; None (and ``result`` failed) when it cannot be."""
    try:
        return _prepare_submission(entry, scratch / "submission", own_dir)
    except (CbirError, OSError, ValueError) as err:
        result.status, result.reason = "failed", f"could not prepare the submission: {err}"
        return None


def _labelled_run(module: Path, staged: Staged, sandbox: Sandbox, cfg: dict, scratch: Path, n: int,
                  outputs: list[str]) -> tuple[dict, np.ndarray]:
    """Run ``n`` (:func:`_run_process` in ``scratch/work<n>``); a failure's reason starts with its :func:`run_label`."""
    label = run_label(n, cfg["timing"]["warmup"])
    try:
        return _run_process(module, staged, sandbox, cfg, scratch / f"work{n}", label, outputs)
    except _Failure as err:
        raise _Failure(f"{label}: {err}", err.wall_clock) from None


def run_one(student: str, entry: Path, staged: Staged, sandbox: Sandbox, cfg: dict, scratch: Path,
            own_dir: bool = False) -> Result:
    """Grade one submission over fresh-process runs (module docstring, step 2); never raises for its doing.

    ``timing.warmup`` untimed runs, then timed runs while :func:`scoring.needs_another_run`.  Every
    run's answer is checked and scored; the result carries the metrics of the worst run (lowest
    :func:`scoring.quality`), whether all answers were identical, and one line per run in ``runs``.
    """
    result = Result(student)
    module = _prepare(result, entry, scratch, own_dir)
    if module is None:
        return result
    timing = cfg["timing"]
    outputs: list[str] = []
    worst, first_ids, identical = None, None, True
    try:
        while len(result.runs) < timing["warmup"] or scoring.needs_another_run(_timed_totals(result.runs, cfg), timing):
            n, timed = len(result.runs) + 1, len(result.runs) >= timing["warmup"]
            times, ids = _labelled_run(module, staged, sandbox, cfg, scratch, n, outputs)
            metrics = evaluate_answer(ids, staged)
            quality = scoring.quality(metrics, cfg)
            result.runs.append({"run": n, "timed": timed, **times, "quality": quality})
            if worst is None or quality < worst[0]:
                worst = (quality, metrics)
            first_ids = ids if first_ids is None else first_ids
            identical = identical and np.array_equal(ids, first_ids)
        result.metrics, result.answers_identical = worst[1], identical
        result.timings = _median_timings(result.runs, cfg, len(staged.query))
    except _Failure as err:
        result.status, result.reason = "failed", str(err)
    result.output = "\n".join(outputs)
    return result


def first_run(student: str, entry: Path, staged: Staged, sandbox: Sandbox, cfg: dict, scratch: Path,
              own_dir: bool = False) -> tuple[Result, bool]:
    """Only what :func:`run_one` does up to the end of its run 1: ``(result, wall_clock)``; never raises for its doing.

    The submission is prepared in ``scratch``, run once in a fresh sandboxed process (import, build,
    retrieve) and its answer checked (:func:`check_packed`) and evaluated (:func:`evaluate_answer`).
    A failure has exactly :func:`run_one`'s reason for run 1 (``run 1 (warm-up): ...``, or
    ``run 1 (timed): ...`` under ``timing.warmup = 0``; ``could not prepare the submission: ...``) and
    output.  ``wall_clock``: the run was ended by a wall-clock limit (``timing.*_timeout_s``,
    ``limits.wall_s``), which other work on the machine can cause.  A passing result has the run's
    metrics and its line in ``runs`` (untimed); its times are not a measurement.
    """
    result = Result(student)
    module = _prepare(result, entry, scratch, own_dir)
    if module is None:
        return result, False
    outputs: list[str] = []
    wall_clock = False
    try:
        times, ids = _labelled_run(module, staged, sandbox, cfg, scratch, 1, outputs)
        result.metrics = evaluate_answer(ids, staged)
        result.runs.append({"run": 1, "timed": False, **times, "quality": scoring.quality(result.metrics, cfg)})
    except _Failure as err:
        result.status, result.reason, wall_clock = "failed", str(err), err.wall_clock
    result.output = "\n".join(outputs)
    return result, wall_clock


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _raise_if_error(reply: dict, op: str) -> None:
    if not isinstance(reply, dict) or "ok" not in reply:
        raise _Failure(f"malformed reply to {op}")
    if not reply["ok"]:
        raise _Failure(f"{op} raised {reply.get('error', 'an error')}")


def run_challenge(submissions: str | Path, dataset: str, out_dir: str | Path, config: str | Path | None = None,
                  overrides: dict | None = None, root=None, progress: bool = True, cluster="none") -> dict:
    """Grade every submission; write ``leaderboard.csv``, ``leaderboard.html`` and ``results.json``.

    ``cluster`` (:mod:`cbir_kit.cluster`): ``"none"`` (default) grades here, one run after another;
    ``"local:N"``, a scheduler address or a ``distributed.Client`` first checks every submission's
    correctness in parallel on the cluster, then times those that passed here, one at a time
    (module docstring).  The results are the same in form and content.
    """
    from ..datasets import load
    from .leaderboard import write_leaderboard

    on_cluster = parse_cluster(cluster)[0] != "none"   # a bad spec fails here, before anything is staged
    cfg = scoring.load_config(config, overrides)
    sandbox = Sandbox(Limits.from_dict(cfg["limits"]), cfg["sandbox"])
    submissions = Path(submissions).resolve()
    entries = find_submissions(submissions)
    ds = load(dataset, root=root)
    out_dir = Path(out_dir)
    say = print if progress else (lambda *a, **k: None)
    say(f"sandbox: {sandbox.note}")
    with tempfile.TemporaryDirectory(prefix="cbir-challenge-") as tmp, contextlib.closing(sandbox):
        tmp = Path(tmp)
        tmp.chmod(0o755)
        seed = staging_seed(cfg["seed"])
        staged = stage_dataset(ds, tmp / "data", seed)
        k = answer_cap(cfg, len(staged.gallery))
        say(f"dataset {ds.name}: {len(staged.query)} hidden queries, {len(staged.gallery)} gallery images, "
            f"at most {k} results per query" + (" (k = 0: no cap)" if cfg["k"] == 0 else ""))
        baseline_module = Path(cfg["baseline"]).resolve() if cfg["baseline"] else BASELINE
        if not baseline_module.is_file():
            raise CbirError(f"baseline module {baseline_module} (config key 'baseline') does not exist")
        batch = [(BASELINE_NAME, baseline_module, False)]
        batch += [(student, entry, entry.parent.resolve() != submissions) for student, entry in entries.items()]
        if on_cluster:
            results = grade_batch_on_cluster(batch, staged, sandbox, cfg, tmp, cluster, say)
        else:
            results = grade_batch(batch, staged, sandbox, cfg, tmp, say)
    summary = {"dataset": ds.name, "n_queries": len(staged.query), "n_gallery": len(staged.gallery),
               "k": k, "staging_seed": seed, "sandbox": sandbox.mode, "sandbox_note": sandbox.note, "config": cfg,
               "results": [r.__dict__ for r in results]}
    write_leaderboard(summary, out_dir)
    return summary


def grade_batch(batch: list[tuple[str, Path, bool]], staged: Staged, sandbox: Sandbox, cfg: dict, tmp: Path,
                say=lambda *a: None) -> list[Result]:
    """:func:`run_one` for each ``(student, entry, own_dir)`` in turn, baseline first; then :func:`rescore`.

    Raises :class:`CbirError` when the baseline fails: the speed score needs its time.
    """
    results = []
    for i, (student, entry, own_dir) in enumerate(batch):
        scratch = tmp / f"run{i:04d}"
        scratch.mkdir()
        t0 = time.perf_counter()
        res = run_one(student, entry, staged, sandbox, cfg, scratch, own_dir)
        shutil.rmtree(scratch, ignore_errors=True)
        say(f"  {student}: {res.status}{' - ' + res.reason if res.reason else ''} ({time.perf_counter() - t0:.1f} s)")
        results.append(res)
    if results[0].status != "ok":
        raise CbirError(f"the baseline failed ({results[0].reason}); the speed score needs it. "
                        f"Check the sandbox limits in the config. Output:\n{results[0].output[-2000:]}")
    rescore(results, cfg)
    return results


def rescore(results: list[Result], cfg: dict) -> None:
    """Fill ``scores`` of every result from its metrics and timings (``results[0]`` is the baseline)."""
    base = results[0].timings
    for r in results:
        r.scores = scoring.score(r.metrics, r.timings, base, cfg) if r.status == "ok" else \
            {"quality": 0.0, "speedup": 0.0, "measured_speedup": 0.0, "speed": 0.0, "score": 0.0}


# ---- with a cluster: correctness checked in parallel, timing serial here (module docstring) ----

def linked_copy(staged: Staged, dest: Path) -> Staged:
    """``staged`` with its folder at ``dest``: new folders (their own modes) holding hard links to the staged files.

    The query folder is made readable here to list and link it: call this while no submission
    runs.  Every staged file gets the same number of links, so the count tells nothing about a
    label.  Where a link cannot be made (another file system) the file is copied with its time.
    """
    show_queries(staged.folder, True)
    try:
        for split in ("gallery", "query"):
            (dest / split).mkdir(parents=True)
            for name in sorted(os.listdir(staged.folder / split)):
                try:
                    os.link(staged.folder / split / name, dest / split / name)
                except OSError:
                    shutil.copy2(staged.folder / split / name, dest / split / name)
    finally:
        show_queries(staged.folder, False)
    dest.chmod(0o755)
    (dest / "gallery").chmod(0o755)
    show_queries(dest, False)
    return dataclasses.replace(staged, folder=dest)


def remove_copy(folder: Path) -> None:
    """Delete a scratch folder that holds a :func:`linked_copy` (whose query folder is unreadable)."""
    if (folder / "data" / "query").is_dir():
        show_queries(folder / "data", True)
    shutil.rmtree(folder, ignore_errors=True)


def check_task(student: str, entry: Path, own_dir: bool, staged: Staged, cfg: dict, mode: str,
               scratch: Path) -> tuple[Result, bool]:
    """Worker task: :func:`first_run` in a :class:`Sandbox` of ``mode`` built here.

    ``staged``: this task's :func:`linked_copy`; ``scratch``: a folder of its own.  Raises
    :class:`CbirError` when this worker cannot see the staged data or the submission: a problem
    of the cluster's storage, not the student's.
    """
    for path, what in ((staged.folder / "gallery", "the staged dataset"), (entry, "the submission")):
        if not path.exists():
            raise CbirError(f"{what} {path} is not visible on this worker; on several machines the staging "
                            "folder ($TMPDIR) and the submissions must be on storage every worker sees")
    sandbox = Sandbox(Limits.from_dict(cfg["limits"]), mode)
    try:
        return first_run(student, entry, staged, sandbox, cfg, scratch, own_dir)
    finally:
        sandbox.close()
        shutil.rmtree(scratch / "submission", ignore_errors=True)


def check_on_cluster(client, batch: list[tuple[str, Path, bool]], staged: Staged, sandbox: Sandbox, cfg: dict,
                     tmp: Path, say=lambda *a: None) -> list[tuple[Result, bool]]:
    """Phase 1 (module docstring): :func:`check_task` of each ``(student, entry, own_dir)``, in ``batch``'s order."""
    copies = []
    for i in range(len(batch)):
        scratch = tmp / f"check{i:04d}"
        copies.append((scratch, linked_copy(staged, scratch / "data")))
    futures = [client.submit(check_task, student, entry, own_dir, copy, cfg, sandbox.mode, scratch, pure=False)
               for (student, entry, own_dir), (scratch, copy) in zip(batch, copies)]
    checks: dict[int, tuple[Result, bool]] = {}
    for i, (result, wall_clock) in gather_checked(client, futures, lambda i: f"checking {batch[i][0]}"):
        remove_copy(copies[i][0])
        checks[i] = (result, wall_clock)
        verdict = "passed" if result.status == "ok" else \
            f"{result.status} - {result.reason}" + (" (to be confirmed here)" if wall_clock else "")
        say(f"  {result.student}: {verdict}")
    return [checks[i] for i in range(len(batch))]


def grade_batch_on_cluster(batch: list[tuple[str, Path, bool]], staged: Staged, sandbox: Sandbox, cfg: dict,
                           tmp: Path, cluster, say=lambda *a: None) -> list[Result]:
    """:func:`grade_batch` with phase 1 on ``cluster`` (module docstring).

    ``batch[0]`` is the baseline.  Returns the results in ``batch``'s order, scored; raises
    :class:`CbirError` when the baseline fails, or when a task fails for a reason of the cluster's.
    """
    say(f"checking {len(batch) - 1} submissions in parallel on the cluster")
    with cluster_client(cluster) as client:
        checks = check_on_cluster(client, batch[1:], staged, sandbox, cfg, tmp, say)
    go_on = [0] + [i + 1 for i, (result, wall_clock) in enumerate(checks) if result.status == "ok" or wall_clock]
    say(f"timing the baseline and {len(go_on) - 1} submissions here, one at a time")
    timed = dict(zip(go_on, grade_batch([batch[i] for i in go_on], staged, sandbox, cfg, tmp, say)))
    results = [timed[i] if i in timed else checks[i - 1][0] for i in range(len(batch))]
    rescore(results, cfg)
    return results
