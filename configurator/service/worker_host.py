"""``configurator worker``: search workers on any host, without the HTTP front.

The pool claims jobs from the shared store (``WorkerPool`` with ``claim_from_store``): queued by any server, or
left running by a host that died (once its lease expired). A job's cluster profile is read from the store by
the exact version its request names, so a worker host needs no configuration beyond the store URL.
"""

from __future__ import annotations

from typing import Any

from configurator.errors import InputError
from configurator.service.store import Job, Store, StoreError, describe_store_error, is_store_error
from configurator.service.workers import DEFAULT_JOB_TIMEOUT_S, DEFAULT_LEASE_S, DEFAULT_MEMORY_LIMIT_BYTES, WorkerPool


def profile_of(store: Store, job: Job) -> dict[str, Any] | None:
    """The registered profile a job's request names (None: a preset); ``InputError`` when it is gone."""
    from configurator.profiles import cluster_names

    name = job.request["cluster"]
    if name in cluster_names():
        return None
    found = store.get_cluster(name, job.request.get("cluster_version"))
    if found is None:
        raise InputError("cluster", name, "is neither a preset nor a registered cluster profile (any more)")
    return found[1]


def prepare_optuna(db_url: str) -> None:
    """Optuna's tables, created before any job opens a study (two creating them at once race)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.storages.RDBStorage(db_url).engine.dispose()


def start_worker_host(db_url: str, *, workers: int = 2, job_timeout_s: float = DEFAULT_JOB_TIMEOUT_S,
                      lease_s: float = DEFAULT_LEASE_S,
                      memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
                      metrics_port: int | None = None) -> WorkerPool:
    """Open (and migrate) the store, start a pool that claims from it; ``StoreError`` names a store fault.
    With ``metrics_port`` the host serves ``/metrics`` (Prometheus text, loopback only: no token guards it)."""
    try:
        store = Store(db_url)
        store.check_writable()
    except Exception as exc:  # noqa: BLE001 - classified, never a trace
        if is_store_error(exc):
            raise StoreError(describe_store_error(exc)) from None
        raise
    optuna_ready = [False]

    def resolve(job: Job) -> dict[str, Any] | None:
        if job.request.get("method") == "optuna" and not optuna_ready[0]:
            prepare_optuna(db_url)
            optuna_ready[0] = True
        return profile_of(store, job)

    on_finished = None
    if metrics_port:
        from prometheus_client import start_http_server

        from configurator.service.metrics import ServiceMetrics

        metrics = ServiceMetrics(store)
        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
        on_finished = metrics.job_finished
    pool = WorkerPool(db_url, workers=workers, max_queue=1, job_timeout_s=job_timeout_s, on_finished=on_finished,
                      memory_limit_bytes=memory_limit_bytes, mark_job=store.update_job, store=store,
                      lease_s=lease_s, claim_from_store=True, resolve_profile=resolve)
    pool.start()
    return pool


__all__ = ["prepare_optuna", "profile_of", "start_worker_host"]
