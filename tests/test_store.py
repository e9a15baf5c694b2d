"""The service store, one contract run over every backend: SQLite always, PostgreSQL where
``CONFIGURATOR_TEST_PG_URL`` points at a server (``.ci/run`` starts one with ``.ci/postgres.sh`` and sets
``CONFIGURATOR_REQUIRE_POSTGRES=1``, so in CI a missing server fails instead of skipping)."""

from __future__ import annotations

import os
import uuid

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from configurator.service.store import MIGRATIONS, Store  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'store.db'}")
    url = os.environ.get("CONFIGURATOR_TEST_PG_URL")
    if not url:
        if os.environ.get("CONFIGURATOR_REQUIRE_POSTGRES") == "1":
            pytest.fail("CONFIGURATOR_TEST_PG_URL is not set: start one with `bash .ci/postgres.sh`")
        pytest.skip("no PostgreSQL: set CONFIGURATOR_TEST_PG_URL (bash .ci/postgres.sh prints one)")
    s = Store(url)
    with s.engine.begin() as conn:  # a clean slate for each test
        conn.execute(sqlalchemy.text("DELETE FROM jobs"))
        conn.execute(sqlalchemy.text("DELETE FROM clusters"))
    return s


def test_migrations_are_recorded_and_idempotent(store) -> None:  # type: ignore[no-untyped-def]
    assert store.migrate() == MIGRATIONS[-1][0]
    Store(store.url)  # opening again applies nothing twice
    with store.engine.connect() as conn:
        versions = [r[0] for r in conn.execute(sqlalchemy.text("SELECT version FROM schema_version ORDER BY version"))]
    assert versions == [v for v, _, _ in MIGRATIONS]


def test_job_lifecycle_and_cache_lookup(store) -> None:  # type: ignore[no-untyped-def]
    key = uuid.uuid4().hex
    job = store.create_job(key, {"model": "llama3-8b"})
    assert job.status == "queued" and store.find_reusable(key).id == job.id
    store.update_job(job.id, status="running", progress=0.5)
    assert [j.id for j in store.unfinished_jobs()] == [job.id]
    store.update_job(job.id, status="done", progress=1.0, result={"plans": [{"x": 1}], "search": {"evaluated": 3}})
    done = store.get_job(job.id)
    assert done.status == "done" and done.as_dict()["plans"] == [{"x": 1}] and not store.unfinished_jobs()
    failed = store.create_job("other", {})
    store.update_job(failed.id, status="failed", error="no plan fits")
    assert store.find_reusable("other") is None  # failures are retried, not served from the store
    assert store.get_job("missing") is None


def test_cluster_versions_are_never_overwritten(store) -> None:  # type: ignore[no-untyped-def]
    assert store.add_cluster("lab", {"v": 1}) == 1
    assert store.add_cluster("lab", {"v": 2}) == 2
    assert store.get_cluster("lab") == (2, {"v": 2})
    assert store.get_cluster("lab", 1) == (1, {"v": 1})
    assert store.get_cluster("lab", 3) is None
    assert store.list_clusters() == [{"name": "lab", "latest_version": 2, "versions": 2}]
