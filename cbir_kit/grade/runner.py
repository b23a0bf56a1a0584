"""The in-sandbox side of the retrieval challenge: loads one submission and serves the grader.

Run as a plain script (``python runner.py MODULE_PATH REPLY_FD``) inside the sandbox; it imports only the
standard library itself.  Protocol, one JSON object per line:

* commands arrive on stdin: ``{"op": "build", "paths": [...]}``,
  ``{"op": "retrieve", "paths": [...], "k": K}``, ``{"op": "exit"}``;
* replies go to file descriptor ``REPLY_FD``: ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error": "TypeName: message", "traceback": "..."}``.  The first reply
  (``{"ok": true, "result": "loaded"}``) says the module imported.

The submission's own prints go to stdout/stderr, which the grader reads with a size limit.
Times are measured by the grader, from outside, never trusted from here.
"""
import importlib.util
import json
import os
import sys
import traceback


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


def _as_ranked_lists(result) -> list:
    if hasattr(result, "tolist"):
        result = result.tolist()
    return [[int(i) for i in (row.tolist() if hasattr(row, "tolist") else row)] for row in result]


def main(module_path: str, reply_fd: int) -> None:
    commands = os.fdopen(os.dup(0), "r")
    replies = os.fdopen(reply_fd, "w")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    try:
        module = _load(module_path)
    except BaseException as err:  # noqa: BLE001 - the student's import error is the reply
        _reply(replies, _error(err))
        return
    _reply(replies, {"ok": True, "result": "loaded"})
    for line in commands:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            return
        try:
            if cmd["op"] == "build":
                module.build(list(cmd["paths"]))
                result = None
            else:
                result = _as_ranked_lists(module.retrieve(list(cmd["paths"]), int(cmd["k"])))
        except BaseException as err:  # noqa: BLE001 - reported to the grader
            _reply(replies, _error(err))
            continue
        _reply(replies, {"ok": True, "result": result})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
