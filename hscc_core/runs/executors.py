"""Executors for sweeps: where the runs of ``hscc sweep`` compute (this machine, or a Ray cluster).

Both implement the two-method ``Executor`` protocol of :mod:`hscc_core.runs.sweeps` (``submit_all``
yields ``(task, result or exception)`` as tasks finish; ``shutdown`` stops early), so the sweep
logic, the run store and the results do not depend on the engine. ``run_sweep`` stays the single
writer: workers only compute and return ``(run, arrays)``.

Ray (Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", OSDI 2018) is an
optional dependency (``pip install 'hscc-explorer[ray]'``), imported only when a ``RayExecutor`` is
built. Workers read what the driver prepared (baseline checkpoint, decoded images, the original's run,
calibration statistics) from the run store, so on a multi-node cluster the cache folder must be on
shared storage at the same path on every node; see ``docs/ray.md``.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from typing import Any, Callable, Iterable, Iterator

from hscc_core.runs.sweeps import LocalExecutor

EXECUTORS = ("local", "ray")
RAY_MISSING = "the ray executor needs the optional dependency: pip install 'hscc-explorer[ray]'"
# Seconds to wait for a TCP connection to a given cluster address before calling it unreachable:
# ray.init itself waits about two minutes on an address nobody listens on.
CONNECT_TIMEOUT_S = 5.0


def make_executor(name: str, workers: int = 1, address: str | None = None):
    """The executor that ``hscc sweep --executor NAME`` selects.

    Parameters
    ----------
    name : {"local", "ray"}
    workers : int
        ``local``: worker processes (1: in this process). ``ray`` without ``address``: CPUs of the
        Ray instance started on demand when > 1 (default: all cores); ignored with an address (the
        cluster's resources decide).
    address : str, optional
        Ray cluster address (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); only for ``ray``.

    Raises
    ------
    ValueError
        Unknown name, an address given to ``local``, Ray missing, or an unreachable address.
    """
    if name == "local":
        if address is not None:
            raise ValueError("--address only applies to --executor ray")
        return LocalExecutor(workers)
    if name == "ray":
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return RayExecutor(address=address, num_cpus=workers if workers > 1 and address is None else None)
    raise ValueError(f"unknown executor '{name}' (allowed: {', '.join(EXECUTORS)})")


class RayExecutor:
    """Run sweep tasks as Ray tasks, on an existing cluster or on a local instance started on demand.

    Parameters
    ----------
    address : str, optional
        Cluster to connect to: ``auto`` (the cluster ``ray start`` runs on this node), ``HOST:PORT``
        of the head node's GCS (this machine must be a node of the cluster), or ``ray://HOST:PORT``
        (Ray Client, needs ``ray[client]``). None: ``RAY_ADDRESS`` if set, else a new local instance,
        started at the first task and stopped when the sweep ends or is interrupted. When Ray is
        already initialised in this process (a notebook, the tests) that connection is used and
        left open.
    max_retries : int
        Extra attempts of a task that raised or whose worker died, before its error is reported;
        the sweep goes on either way.
    num_cpus : int, optional
        CPUs of a locally started instance (default: all cores); ignored with a cluster address.
        Each task takes one CPU, so that many tasks run at once, each with one torch thread (Ray
        sets ``OMP_NUM_THREADS=1`` in workers).

    Raises
    ------
    ValueError
        Ray is not installed, ``max_retries``/``num_cpus`` are out of range, or the address is
        malformed or nobody answers there.
    """

    def __init__(self, address: str | None = None, max_retries: int = 2, num_cpus: int | None = None):
        try:
            import ray  # noqa: F401, PLC0415 - optional dependency
        except ImportError:
            raise ValueError(RAY_MISSING) from None
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries}")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"num_cpus must be an integer >= 1, got {num_cpus}")
        address = address if address is not None else (os.environ.get("RAY_ADDRESS") or None)
        self.address = address
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self._owned = False  # True when this executor called ray.init (so it calls ray.shutdown)
        self._pending: dict = {}  # ObjectRef -> task, the tasks submitted and not yet yielded
        if address is not None:
            # Connect now: a wrong address fails before the sweep prepares anything. A local
            # instance, by contrast, is started only when there is work (it takes seconds).
            _check_reachable(address)
            self._connect()

    # ---- connection -----------------------------------------------------------------------------
    def _connect(self):
        import ray  # noqa: PLC0415

        if ray.is_initialized():
            return ray
        kwargs: dict[str, Any] = {
            # Workers' stdout would land on our stdout and break `--json`; task errors come back as
            # exceptions anyway, and the workers' logs stay in the Ray session folder.
            "log_to_driver": False, "include_dashboard": False, "logging_level": logging.WARNING,
        }
        if self.address is None:
            # "local": a fresh instance even if `ray start` runs on this machine.
            kwargs.update(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1)
        else:
            kwargs["address"] = self.address
        try:
            ray.init(**kwargs)
        except (OSError, ValueError, RuntimeError) as exc:  # ConnectionError, TimeoutError, ...
            where = self.address or "a local instance"
            hint = ""
            if self.address not in (None, "auto") and not os.environ.get("RAY_AUTH_MODE"):
                # Ray only reads its auth token by itself for `auto`; a token-protected cluster
                # (the default of `ray start`) refuses an explicit address without it.
                hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token: see docs/ray.md)"
            raise ValueError(f"cannot start or reach the Ray cluster at {where}: {exc}{hint}") from None
        self._owned = True
        _route_ray_messages_to_stderr()
        return ray

    def _release(self) -> None:
        if self._owned:
            import ray  # noqa: PLC0415

            self._owned = False
            ray.shutdown()  # stops a local instance we started; only disconnects from a cluster

    # ---- the Executor protocol -------------------------------------------------------------------
    def submit_all(self, fn: Callable[[Any], Any], tasks: Iterable) -> Iterator[tuple[Any, Any]]:
        """Submit tasks as the cluster has CPUs for them and yield ``(task, result or exception)``
        as each finishes.

        At most one task per cluster CPU is in flight, so the sweep claims runs as they start and
        a concurrent sweep can take the rest. A task that raised (after its retries) yields the
        task's own exception, not Ray's wrapper, so the sweep reports ``RuntimeError: ...`` as
        the local executor does.
        """
        todo = iter(tasks)
        first = next(todo, None)
        if first is None:
            self._release()
            return
        ray = self._connect()
        from ray.exceptions import RayError, RayTaskError  # noqa: PLC0415

        remote = ray.remote(num_cpus=1, max_retries=self.max_retries,
                            retry_exceptions=True)(_call_in_driver_cwd)
        cwd = os.getcwd()
        todo = itertools.chain([first], todo)
        window = max(1, int(ray.cluster_resources().get("CPU", 1)))

        def top_up() -> None:
            for task in itertools.islice(todo, window - len(self._pending)):
                self._pending[remote.remote(fn, task, cwd)] = task

        try:
            top_up()
            while self._pending:
                # A timeout keeps the wait short so Ctrl-C is handled within a second.
                done, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)
                for ref in done:
                    task = self._pending.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        outcome = cause if isinstance(cause, BaseException) else exc
                    except RayError as exc:  # worker or node died (after retries), task cancelled
                        outcome = exc
                    yield task, outcome
                top_up()
        finally:
            # Normal end, Ctrl-C in ray.wait, or the consumer closing the generator early.
            self.shutdown()

    def shutdown(self) -> None:
        """Cancel the tasks not yet finished and stop (or disconnect from) a Ray this executor started.

        Safe to call more than once; finished runs already yielded are the caller's to keep.
        """
        if self._pending:
            import ray  # noqa: PLC0415

            pending, self._pending = list(self._pending), {}
            if ray.is_initialized():
                for ref in pending:
                    try:
                        # force: kill the worker so a shared cluster's CPUs are freed now, not when
                        # a long compression finishes; cancelled tasks are not retried.
                        ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001 - finished or already gone: nothing to cancel
                        pass
        self._release()


def _call_in_driver_cwd(fn: Callable[[Any], Any], task: Any, cwd: str) -> Any:
    """Run ``fn(task)`` in a Ray worker, from the driver's working folder when this node has it.

    Relative paths in the task (``--cache-dir cache``, the default) then mean what they mean on the
    driver: on a cluster the driver's folder is on shared storage or all paths are absolute.
    """
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return fn(task)
    except FileNotFoundError as exc:
        # The usual cluster mistake is a cache or dataset folder that this node cannot see.
        raise FileNotFoundError(f"on Ray node {socket.gethostname()}: {exc} (is the cache folder on "
                                f"shared storage at the same path on every node? see docs/ray.md)") from exc


def _check_reachable(address: str) -> None:
    """Raise ``ValueError`` when nothing accepts a TCP connection at ``HOST:PORT`` or ``ray://HOST:PORT``.

    ``auto`` and ``local`` are left to ``ray.init``, which fails at once when there is no cluster.
    """
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid Ray address '{address}' (expected auto, HOST:PORT or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {exc}") from None


def _route_ray_messages_to_stderr() -> None:
    # Ray prints task-failure notices ("Task failed. There are 2 retries remaining...") to the
    # driver's *stdout*, which would corrupt `hscc sweep --json`. They are logs: send them to stderr.
    # This wraps a private Ray function; if it moves, the notices stay on stdout (nothing breaks).
    try:
        from ray._private import worker  # noqa: PLC0415
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_hscc_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        return original(dict(data, is_err=True), *args, **kwargs)

    to_stderr._hscc_stderr = True
    worker.print_to_stdstream = to_stderr
