"""Ground floor: where work runs beyond this process, a Dask cluster named by one spec (docs/scale.md; notebook 00 names it).

``--cluster SPEC`` (``cluster=`` in Python, a :class:`cbir_kit.runtime.Runtime` field):

``none``            the default: everything in this process, Dask never imported;
``local:N``         a Dask ``LocalCluster`` of N worker processes, one thread each, each limited
                    to an equal share of this machine's memory;
``tcp://host:8786`` the scheduler of a running cluster (``dask scheduler`` / ``dask worker``,
                    or dask-jobqueue's ``SLURMCluster``), any Dask address;
a ``distributed.Client``  used as it is (and left open).

The work sent to a cluster is library code (:mod:`cbir_kit.features.distributed`,
:mod:`cbir_kit.index.sharded`, :mod:`cbir_kit.grade.parallel`): a function defined in a notebook
would be pickled by value and could not keep a model loaded between tasks.  Results are identical
to ``none``; tests check it on a ``LocalCluster`` of two workers.
"""
from __future__ import annotations

import contextlib
import re
from typing import Iterator

from .errors import CbirError

INSTALL = "pip install -e \".[cluster]\" (Dask and distributed)"
ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc|ws|wss)://\S+$")


def parse_cluster(spec) -> tuple[str, object]:
    """``("none", None)``, ``("local", N)``, ``("address", "tcp://...")`` or ``("client", client)``."""
    if spec is None or spec == "none":
        return "none", None
    if not isinstance(spec, str):
        if type(spec).__name__ == "Client" and hasattr(spec, "submit"):
            return "client", spec
        raise CbirError(f"cluster= must be 'none', 'local:N', a scheduler address or a distributed.Client; got "
                        f"{type(spec).__name__}")
    if spec.startswith("local:"):
        n = spec.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise CbirError(f"cluster='{spec}': local:N needs a number of workers N >= 1, e.g. 'local:2'")
        return "local", int(n)
    if ADDRESS.match(spec):
        return "address", spec
    raise CbirError(f"cluster='{spec}' is not 'none', 'local:N' (N worker processes on this machine) or a Dask "
                    "scheduler address such as 'tcp://10.0.0.5:8786'")


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise CbirError(f"cluster= needs Dask, which is not installed: {INSTALL}") from None
    return distributed


@contextlib.contextmanager
def cluster_client(spec) -> Iterator[object | None]:
    """A ``distributed.Client`` for ``spec`` while the block runs (None for ``none``).

    A ``local:N`` cluster is started for the block and shut down after it; a client passed in
    stays open; an address is connected to (and only the connection is closed).
    """
    kind, value = parse_cluster(spec)
    if kind == "none":
        yield None
        return
    if kind == "client":
        yield value
        return
    distributed = _import_distributed()
    if kind == "local":
        import psutil

        memory = int(psutil.virtual_memory().total * 0.8 / value)
        with distributed.LocalCluster(n_workers=value, threads_per_worker=1, processes=True, memory_limit=memory,
                                      dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(value, timeout="10s")
    except OSError as err:
        raise CbirError(f"cluster='{value}': no Dask scheduler answers there ({err}); start one with "
                        "`dask scheduler` and workers with `dask worker ADDRESS`") from None
    with client:
        yield client


def gather_checked(client, futures: list, describe) -> Iterator[tuple[int, object]]:
    """``(i, result)`` of each future as it finishes; a failed task raises one error naming its item.

    ``describe(i)`` names the item of future ``i`` (an image range, a student).  A worker that dies
    is retried by Dask on another worker; a task that keeps killing workers ends as an error here,
    never a hang.
    """
    distributed = _import_distributed()
    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for future in distributed.as_completed(futures):
            i = index[future.key]
            try:
                yield i, future.result()
            except distributed.KilledWorker as err:
                raise CbirError(f"{describe(i)}: the workers running it died ({err}); check their memory limit "
                                "and logs") from None
            except CbirError as err:
                raise CbirError(f"{describe(i)}: {err}") from None
            except Exception as err:
                raise CbirError(f"{describe(i)} failed on a worker: {type(err).__name__}: {err}") from err
    except BaseException:
        client.cancel(futures)          # nothing keeps running for a caller that has given up
        raise
