"""Instructor side, inside the sandbox: loads one challenge submission and serves the grader.

The in-sandbox side of the retrieval challenge: loads one submission and serves the grader.

Run as a plain script (``python runner.py MODULE_PATH REPLY_FD``) inside the sandbox; it imports only the
standard library itself.  The grader starts a fresh one for every run (import, build, retrieve once
each).  Protocol, one JSON object per line:

* the first reply (``{"ok": true, "result": "ready"}``) says the interpreter is up; nothing of the
  submission has run yet, so the grader's clock for the import starts after it;
* commands arrive on stdin: ``{"op": "import"}``, ``{"op": "build", "paths": [...]}``,
  ``{"op": "retrieve", "paths": [...], "k": K}``, ``{"op": "exit"}``;
* replies go to file descriptor ``REPLY_FD``: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error": "TypeName: message", "traceback": "..."}``.
* the reply to ``retrieve`` is a header line ``{"ok": true, "rows": Q, "ids": N, "payload_bytes": B}``
  followed by ``B = 4 * (Q + N)`` raw bytes (:func:`pack_answer`): Q int32 list lengths, then the
  N int32 gallery indices of all lists one after the other, in native byte order (grader and
  runner share the machine).  1,000 queries x 10,000 ids are 40 MB this way, about 60 MB as JSON
  text, and packing a NumPy answer costs one copy instead of ten million Python ints.

The submission's own prints go to stdout/stderr, which the grader reads with a size limit.
Times are measured by the grader, from outside, never trusted from here.
"""
import importlib.util
import json
import os
import sys
import traceback
from array import array

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def _reply(out, obj) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def _error(err: BaseException) -> dict:
    return {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000],
            "traceback": "".join(traceback.format_exception(err))[-8000:]}


def _load(path: str):
    sys.path.insert(0, os.path.dirname(path))
    spec = importlib.util.spec_from_file_location("submission", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["submission"] = module
    spec.loader.exec_module(module)
    for name in ("build", "retrieve"):
        if not callable(getattr(module, name, None)):
            raise AttributeError(f"the submission defines no function {name}(); the challenge needs "
                                 "build(gallery_paths) and retrieve(query_paths, k)")
    return module


def _row_bytes(row) -> tuple[int, bytes]:
    """One ranked list as (length, int32 bytes); NumPy integer rows are cast without a Python loop."""
    if getattr(getattr(row, "dtype", None), "kind", "") in ("i", "u") and getattr(row, "ndim", 0) == 1:
        if row.size and (int(row.min()) < INT32_MIN or int(row.max()) > INT32_MAX):
            raise OverflowError("a gallery index does not fit in 32 bits")
        return int(row.size), row.astype("i4").tobytes()
    values = array("i")
    try:
        values.extend(row)
    except TypeError:                      # floats or other number types: int() each, as Python would
        values = array("i", [int(i) for i in row])
    return len(values), values.tobytes()


def pack_answer(result) -> tuple[int, int, bytes]:
    """``(Q, N, payload)`` of a retrieve() answer: Q int32 lengths, then the N int32 ids of all lists.

    ``result`` is a list of ranked lists (Python ints or 1-D integer arrays) or a 2-D integer array.
    The grader checks everything it receives (:func:`cbir_kit.grade.challenge.check_packed`).
    """
    if array("i").itemsize != 4:
        raise RuntimeError("this platform's C int is not 32 bits; the challenge protocol needs it")
    if getattr(result, "ndim", 0) == 2 and getattr(getattr(result, "dtype", None), "kind", "") in ("i", "u"):
        rows = [result[i] for i in range(result.shape[0])]
    else:
        rows = list(result)
    lengths, chunks = array("i"), []
    for row in rows:
        n, data = _row_bytes(row)
        lengths.append(n)
        chunks.append(data)
    return len(rows), sum(lengths), lengths.tobytes() + b"".join(chunks)


def _serve(cmd: dict, module_path: str, state: dict):
    """Run one command; return the ``retrieve`` answer packed, else None."""
    if cmd["op"] == "import":
        state["module"] = _load(module_path)
    elif cmd["op"] == "build":
        state["module"].build(list(cmd["paths"]))
    else:
        return pack_answer(state["module"].retrieve(list(cmd["paths"]), int(cmd["k"])))
    return None


def main(module_path: str, reply_fd: int) -> None:
    commands = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(reply_fd, "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    _reply(replies, {"ok": True, "result": "ready"})
    state: dict = {}
    for line in commands:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            return
        try:
            packed = _serve(cmd, module_path, state)
        except BaseException as err:  # noqa: BLE001 - the student's error is the reply
            _reply(replies, _error(err))
            continue
        if packed is None:
            _reply(replies, {"ok": True, "result": cmd["op"]})
        else:
            n_rows, n_ids, payload = packed
            replies.write(json.dumps({"ok": True, "rows": n_rows, "ids": n_ids, "payload_bytes": len(payload)}) + "\n")
            replies.flush()
            replies.buffer.write(payload)
            replies.buffer.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
