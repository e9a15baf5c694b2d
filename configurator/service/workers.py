"""Search workers as supervised processes: one process per running job, watched by one thread.

Why not a ``ProcessPoolExecutor``: when one of its processes dies (``kill -9``, the kernel's OOM killer) the
whole pool is broken and every later submission fails, and a job cannot be stopped once it runs. Here each
job runs in its own child process, so the supervisor can

- see a child die and fail its job with the reason (the signal or exit status), then start the next job;
- kill a job that runs past the hard wall-clock limit (``job_timeout_s``), and cap its address space
  (``RLIMIT_AS``, ``memory_limit_bytes``) so a runaway search fails alone instead of taking the host down;
- bound the queue (``max_queue`` jobs waiting; ``QueueFull`` -> HTTP 429);
- drain on shutdown: stop taking jobs, let running ones finish for ``drain_s``, then kill the rest and put
  their jobs back to "queued" in the store, where the next start resumes them.

Children die with the server: each watches the server's pid (its parent is multiprocessing's fork server,
which lives as long as any child does) and, on Linux, sets ``PR_SET_PDEATHSIG`` for the fork server's death,
so no search keeps running after ``kill -9`` of the server (the fork server then exits with its last child).

Jobs are claimed through the store when the pool has one (``store``): a claim is a lease (``Store.claim``:
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL) that the supervisor renews every third of ``lease_s``;
every write about a claimed job is conditional on still holding its lease, so when a host dies and another
worker takes its jobs over after the lease expired, the late writer's result is discarded, never stored
twice. Besides the jobs submitted by its own server, an idle pool claims any claimable job of the store
(``claim_from_store``): queued by another server (``serve --workers 0``) or left by a dead host.

The store is the record: a child writes progress and the outcome itself. When the store cannot be written
(read-only, locked, disk full) the child reports the fault over a pipe and exits; the supervisor keeps the
job's failure in memory and retries the write until the store takes it (``pending_writes``), so once the
store recovers no job is left "running" without a live process.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_JOB_TIMEOUT_S = 300.0
"""Hard wall-clock limit of one job: five times the largest search budget (60 s), for the set-up and the
rendering of the plans around the search."""
DEFAULT_MEMORY_LIMIT_BYTES = 4 * 2**30
"""Address space one job may add to its worker's start (``RLIMIT_AS`` = the worker's mapped size at start + this).
Searches stay near 50 MiB resident (README, Reliability); the margin covers address space that is mapped but
never touched (allocator arenas, thread stacks)."""
DEFAULT_MAX_QUEUE = 64
DEFAULT_DRAIN_S = 10.0
_POLL_S = 0.1
_EXIT_FAULT = 3
_EXIT_OUT_OF_MEMORY = 4
_CLAIM_POLL_S = 0.5
"""How often an idle pool asks the store for a claimable job: one indexed query per pool per half second."""
DEFAULT_LEASE_S = 30.0
LOG = logging.getLogger("configurator.service")


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` jobs: the client should retry later (HTTP 429)."""


class PoolStopped(RuntimeError):
    """The pool is draining or stopped: no new jobs (HTTP 503)."""


def _process_alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed server is a zombie until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True  # no /proc: the signal check is all there is


def _die_with_parent(server_pid: int) -> None:
    """Exit when the server dies. The job's parent is multiprocessing's fork server, which stays alive as
    long as any of its children does (each holds its liveness pipe), so PR_SET_PDEATHSIG (SIGKILL when the
    *parent* dies, Linux) covers only the fork server's death; a thread also watches the server's pid."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except OSError:
            pass
    if os.getppid() != parent or not _process_alive(server_pid):  # died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or not _process_alive(server_pid):
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="server-watch").start()


def _child_main(db_url: str, job_id: str, profile: dict[str, Any] | None, memory_limit_bytes: int | None,
                conn: Any, lease: str | None = None, server_pid: int | None = None) -> None:
    """A worker process: limits first, then the job; a store fault is sent to the supervisor over ``conn``."""
    _die_with_parent(server_pid if server_pid is not None else os.getppid())
    if memory_limit_bytes:
        try:
            import resource

            # On top of what the worker has mapped already (the preloaded search, numpy's thread buffers: their
            # size depends on the host's core count), so the limit means the same on a laptop and a 192-core node.
            limit = _address_space_bytes() + memory_limit_bytes
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    try:
        from configurator.service.jobs import run_job

        run_job(db_url, job_id, profile, lease=lease)
    except MemoryError:
        os._exit(_EXIT_OUT_OF_MEMORY)  # no allocation on the way out: the traceback still holds the memory
    except BaseException as exc:  # noqa: BLE001 - the reason goes to the supervisor, never a stack trace
        try:
            from configurator.service.store import describe_store_error

            conn.send(describe_store_error(exc))
        except BaseException:  # noqa: BLE001 - the exit status still says the job failed
            pass
        os._exit(_EXIT_FAULT)
    os._exit(0)


def _address_space_bytes() -> int:
    """This process's mapped address space now (``VmSize``), 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _gib(n: int | None) -> str:
    if not n:
        return "none"
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class _Running:
    job_id: str
    process: Any
    conn: Any
    deadline: float
    started: float
    killed_for: str | None = None
    lease: str | None = None


@dataclass
class PoolHealth:
    ok: bool
    workers: int
    running: int
    queued: int
    max_queue: int
    supervisor_alive: bool
    pending_writes: int
    worker_pids: list[int]
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "workers": self.workers, "running": self.running, "queued": self.queued,
                "max_queue": self.max_queue, "supervisor_alive": self.supervisor_alive,
                "pending_writes": self.pending_writes, "worker_pids": self.worker_pids, "problem": self.problem}


@dataclass
class WorkerPool:
    """``submit(job_id, profile)`` queues a stored job; a supervisor thread runs at most ``workers`` at once."""

    db_url: str
    workers: int = 2
    max_queue: int = DEFAULT_MAX_QUEUE
    job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES
    mark_job: Callable[..., None] | None = None
    """``mark_job(job_id, status=..., error=...)``: how the supervisor writes a job's fate (the store's
    ``update_job``); it may raise while the store is faulty, and is retried."""
    store: Any = None
    """The ``Store``: with it, jobs are claimed under leases (see the module's docstring); without it, submitted
    jobs run as they are (one process, no other claimer)."""
    claim_from_store: bool = True
    lease_s: float = DEFAULT_LEASE_S
    resolve_profile: Callable[[Any], dict[str, Any] | None] | None = None
    """``resolve_profile(job)``: the registered cluster profile of a job claimed from the store (None: a preset);
    raises ``InputError`` when it no longer exists (the job fails with that reason)."""
    _owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    on_finished: Callable[[str, str, float], None] | None = None
    """``on_finished(job_id, outcome, seconds)`` after each worker process ends (metrics)."""
    _last_claim: float = 0.0
    _last_heartbeat: float = 0.0
    _queue: collections.deque = field(default_factory=collections.deque)
    _running: dict[str, _Running] = field(default_factory=dict)
    _pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: bool = False
    _thread: threading.Thread | None = None
    _context: Any = None

    def start(self) -> None:
        if sys.platform.startswith("linux"):
            self._context = multiprocessing.get_context("forkserver")
            # Children fork from a server that already imported the search: a job starts in milliseconds.
            self._context.set_forkserver_preload(["configurator.service.jobs", "configurator.search.optimize",
                                                  "configurator.render", "sqlalchemy"])
            # Start the fork server now, beside the HTTP server's own start, not on the first job.
            from multiprocessing import forkserver

            threading.Thread(target=forkserver.ensure_running, daemon=True, name="forkserver-start").start()
        else:
            self._context = multiprocessing.get_context("spawn")
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="worker-supervisor")
        self._thread.start()

    # ----- the API side -----
    def submit(self, job_id: str, profile: dict[str, Any] | None, *, bounded: bool = True) -> None:
        with self._lock:
            if self._stopping:
                raise PoolStopped("the service is shutting down")
            if self.workers == 0:
                return  # HTTP only: the job waits in the store for a worker host to claim it
            if bounded and len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} jobs are queued (the limit is {self.max_queue})")
            self._queue.append((job_id, profile))

    def retry_after_s(self) -> int:
        """A rough wait for a queue slot: the queued jobs spread over the workers, 8 s each (a typical search)."""
        with self._lock:
            return max(1, int(8 * (len(self._queue) + 1) / max(1, self.workers)))

    def health(self) -> PoolHealth:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            problem = None
            if not alive:
                problem = "the worker supervisor is not running"
            elif self._pending:
                problem = f"{len(self._pending)} job outcomes wait for the store to accept them"
            return PoolHealth(ok=problem is None, workers=self.workers, running=len(self._running),
                              queued=len(self._queue), max_queue=self.max_queue, supervisor_alive=alive,
                              pending_writes=len(self._pending), problem=problem,
                              worker_pids=[r.process.pid for r in self._running.values() if r.process.pid])

    def child_pids(self) -> list[int]:
        with self._lock:
            return [r.process.pid for r in self._running.values() if r.process.pid]

    def stop(self, drain_s: float = DEFAULT_DRAIN_S) -> None:
        """Stop taking jobs, wait up to ``drain_s`` for running ones, kill the rest and re-queue their jobs."""
        with self._lock:
            self._stopping = True
            queued = [job_id for job_id, _ in self._queue]
            self._queue.clear()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and self._running:
            time.sleep(_POLL_S)
        with self._lock:
            leftover = list(self._running.values())
            for r in leftover:
                r.killed_for = "shutdown"
                r.process.kill()
        for r in leftover:
            r.process.join(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Jobs killed by the shutdown, and jobs never started, are resumed by the next start.
        for r in leftover:
            self._write(r.job_id, status="queued", progress=0.0, only_if_unfinished=True, lease=r.lease)
        for job_id in queued if self.store is None else ():  # claimed mode: never claimed, still queued there
            self._write(job_id, status="queued", progress=0.0, only_if_unfinished=True)
        self._flush()
        for r in leftover:
            r.conn.close()

    # ----- the supervisor thread -----
    def _supervise(self) -> None:
        while True:
            try:
                self._reap()
                self._flush()
                with self._lock:
                    if self._stopping and not self._running:
                        return
                    if not self._stopping:
                        self._start_queued()
                self._heartbeat()
            except Exception:  # noqa: BLE001 - the supervisor must outlive any one fault; /healthz shows it
                time.sleep(1.0)
            time.sleep(_POLL_S)

    def _start_queued(self) -> None:
        while len(self._running) < self.workers:
            lease: str | None = None
            if self._queue:
                job_id, profile = self._queue.popleft()
                if self.store is not None:
                    lease = str(uuid.uuid4())
                    if self.store.claim(lease, self.lease_s, job_id, by=self._owner) is None:
                        continue  # another worker claimed it first
            elif (self.store is not None and self.claim_from_store
                  and time.monotonic() - self._last_claim >= _CLAIM_POLL_S):
                lease = str(uuid.uuid4())
                job = self.store.claim(lease, self.lease_s, by=self._owner)
                if job is None:
                    self._last_claim = time.monotonic()
                    return
                job_id = job.id
                try:
                    profile = self.resolve_profile(job) if self.resolve_profile else None
                except Exception as exc:  # noqa: BLE001 - InputError: the profile was deleted meanwhile
                    self.store.update_job(job_id, status="failed", progress=1.0, lease=lease,
                                          error=f"not run: {exc}")
                    continue
            else:
                return
            stale = self._running.pop(job_id, None)
            if stale is not None:  # this pool's own job, re-claimed after its lease lapsed (a stalled store)
                stale.killed_for = "lease lost"
                stale.process.kill()
                stale.process.join(timeout=5)
                stale.conn.close()
            parent_end, child_end = self._context.Pipe(duplex=False)
            process = self._context.Process(target=_child_main, name=f"configurator-job-{job_id[:8]}",
                                            args=(self.db_url, job_id, profile, self.memory_limit_bytes,
                                                  child_end, lease, os.getpid()), daemon=False)
            process.start()
            child_end.close()
            now = time.monotonic()
            self._running[job_id] = _Running(job_id, process, parent_end, now + self.job_timeout_s, now, lease=lease)
            LOG.info("job started", extra={"job_id": job_id, "pid": process.pid, "host": self._owner})

    def _heartbeat(self) -> None:
        """Renew the lease of every running job; a job whose lease was lost (this host stalled past it and
        another worker claimed the job) is stopped here, its outcome left to the new owner."""
        if self.store is None or time.monotonic() - self._last_heartbeat < self.lease_s / 3:
            return
        self._last_heartbeat = time.monotonic()
        with self._lock:
            held = [(r.job_id, r.lease) for r in self._running.values() if r.lease and r.killed_for is None]
        for job_id, lease in held:
            if not self.store.renew(job_id, lease, self.lease_s):
                with self._lock:
                    r = self._running.get(job_id)
                    if r is not None and r.lease == lease and r.killed_for is None:
                        r.killed_for = "lease lost"
                        r.process.kill()
                LOG.warning("lease lost to another worker; job process stopped", extra={"job_id": job_id})

    def _reap(self) -> None:
        now = time.monotonic()
        finished: list[_Running] = []
        with self._lock:
            for r in list(self._running.values()):
                if r.process.exitcode is None and now > r.deadline and r.killed_for is None:
                    r.killed_for = f"killed after the per-job limit of {self.job_timeout_s:g} s wall-clock"
                    r.process.kill()
                if r.process.exitcode is not None:
                    finished.append(r)
                    del self._running[r.job_id]
        for r in finished:
            r.process.join(timeout=1)
            message = None
            try:
                if r.conn.poll():
                    message = r.conn.recv()
            except (EOFError, OSError):
                pass
            r.conn.close()
            code = r.process.exitcode
            if self.on_finished is not None:
                outcome = ("exited" if code == 0 else "killed" if r.killed_for else
                           "out_of_memory" if code == _EXIT_OUT_OF_MEMORY else "died" if code and code < 0 else "failed")
                try:
                    self.on_finished(r.job_id, outcome, time.monotonic() - r.started)
                except Exception:  # noqa: BLE001 - metrics never stop the supervisor
                    pass
            if r.killed_for in ("shutdown", "lease lost"):
                continue
            lease = {"lease": r.lease} if r.lease else {}
            LOG.info("job process ended", extra={"job_id": r.job_id, "exit_status": code,
                                                  "pid": r.process.pid})
            if r.killed_for:
                self._write(r.job_id, status="failed", progress=1.0, error=f"worker {r.killed_for}", **lease)
            elif code and code < 0:
                name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
                self._write(r.job_id, status="failed", progress=1.0,
                            error=f"worker process died ({name}); the job did not finish", **lease)
            elif code == _EXIT_OUT_OF_MEMORY:
                self._write(r.job_id, status="failed", progress=1.0,
                            error=f"out of memory: the job needed more than the {_gib(self.memory_limit_bytes)} "
                                  "of address space a job may add to its worker (serve --job-memory-gib)", **lease)
            elif code:
                self._write(r.job_id, status="failed", progress=1.0,
                            error=f"worker failed: {message or f'exit status {code}'}", **lease)
            else:
                self._write_if_unfinished(r.job_id, **lease)

    def _write_if_unfinished(self, job_id: str, **lease: Any) -> None:
        """A child that exited cleanly wrote its outcome; if the row still says otherwise, fail it."""
        self._write(job_id, status="failed", progress=1.0, error="worker ended without storing an outcome",
                    only_if_unfinished=True, **lease)

    def _write(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._pending[job_id] = fields
        self._flush()

    def _flush(self) -> None:
        if self.mark_job is None:
            return
        with self._lock:
            pending = list(self._pending.items())
        for job_id, fields in pending:
            try:
                self.mark_job(job_id, **fields)
            except Exception:  # noqa: BLE001 - the store is faulty: keep the outcome, retry on the next tick
                return
            with self._lock:
                if self._pending.get(job_id) is fields:
                    del self._pending[job_id]


__all__ = ["DEFAULT_DRAIN_S", "DEFAULT_LEASE_S", "DEFAULT_JOB_TIMEOUT_S", "DEFAULT_MAX_QUEUE", "DEFAULT_MEMORY_LIMIT_BYTES",
           "PoolHealth", "PoolStopped", "QueueFull", "WorkerPool"]
