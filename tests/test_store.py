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
        conn.execute(sqlalchemy.text("DELETE FROM health"))
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


def test_a_truncated_answer_is_never_reused(store) -> None:  # type: ignore[no-untyped-def]
    key = uuid.uuid4().hex
    cut = store.create_job(key, {"model": "llama3-8b"})
    store.update_job(cut.id, status="done", progress=1.0,
                     result={"plans": [], "search": {"evaluated": 1, "truncated": True, "budget_s": 8.0}})
    assert store.get_job(cut.id).as_dict()["truncated"] is True
    assert store.find_reusable(key) is None  # a later identical request searches again
    full = store.create_job(key, {"model": "llama3-8b"})
    store.update_job(full.id, status="done", progress=1.0, result={"plans": [], "search": {"truncated": False}})
    assert store.find_reusable(key).id == full.id


def test_deleted_cluster_versions_are_hidden_and_never_reused(store) -> None:  # type: ignore[no-untyped-def]
    assert store.add_cluster("gone", {"v": 1}) == 1
    assert store.delete_cluster("gone") == 1
    assert store.get_cluster("gone") is None and store.list_clusters() == []
    assert store.add_cluster("gone", {"v": 2}) == 2


def test_truncated_page_says_so(store) -> None:  # type: ignore[no-untyped-def]
    from configurator.service.page import render_page

    job = store.create_job(uuid.uuid4().hex, {"model": "llama3-8b", "cluster": "dgx-h100"})
    store.update_job(job.id, status="done", result={"plans": [], "search": {"truncated": True, "budget_s": 8.0}})
    page = render_page(store.get_job(job.id), store)
    assert "id='truncated'" in page and "time budget of 8 s" in page
    store.update_job(job.id, result={"plans": [], "search": {"truncated": False}})
    assert "id='truncated'" not in render_page(store.get_job(job.id), store)
