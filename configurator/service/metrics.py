"""``/metrics``: what an operator scrapes (Prometheus text format, ``prometheus-client``).

Two kinds of numbers, so that several servers on one store add up without double counting:

- from the store, read at scrape time: the queue depth and the jobs by state (the same on every server: scrape
  one, or take ``max`` over instances), and how many running jobs hold an expired lease (a dead host's jobs
  waiting to be taken over);
- from this process: plan requests and cache hits answered here, and the wall-clock seconds of every job run by
  this process's workers (``sum`` over instances).

Each app gets its own registry, so two apps in one process (tests) never collide.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from configurator.service.store import STATUSES, Store

SEARCH_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
"""Up to the default per-job limit (300 s); the default search budget is 8 s, its cap 60 s."""


class _StoreCollector:
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("configurator_store_up", "1 when the store answered this scrape, 0 when it did not")
        try:
            counts = self.store.count_by_status()
            expired = self.store.expired_leases(time.time())
        except Exception:  # noqa: BLE001 - a store fault is a metric, never a failed scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily("configurator_queue_depth", "Jobs queued in the store, waiting for a worker")
        queue.add_metric([], counts.get("queued", 0))
        yield queue
        jobs = GaugeMetricFamily("configurator_jobs", "Jobs in the store by state", labels=["state"])
        for state in STATUSES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        stale = GaugeMetricFamily("configurator_jobs_lease_expired",
                                  "Running jobs whose lease expired (their host died or stalled): taken over next")
        stale.add_metric([], expired)
        yield stale


class ServiceMetrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.plan_requests = Counter("configurator_plan_requests", "Plan requests accepted by this server",
                                     registry=self.registry)
        self.cache_hits = Counter("configurator_plan_cache_hits",
                                  "Plan requests this server answered with an existing job (finished or in flight)",
                                  registry=self.registry)
        self.search_seconds = Histogram("configurator_search_seconds",
                                        "Wall-clock seconds of each job's worker process run by this process "
                                        "(set-up, search, rendering), by how the process ended",
                                        ["outcome"], buckets=SEARCH_SECONDS_BUCKETS, registry=self.registry)
        self.registry.register(_StoreCollector(store))

    def job_finished(self, job_id: str, outcome: str, seconds: float) -> None:
        self.search_seconds.labels(outcome=outcome).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["SEARCH_SECONDS_BUCKETS", "ServiceMetrics"]
