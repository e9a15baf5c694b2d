"""The service store, one contract run over every backend: SQLite always, PostgreSQL where
``CONFIGURATOR_TEST_PG_URL`` points at a server (``.ci/run`` starts one with ``.ci/postgres.sh`` and sets
``CONFIGURATOR_REQUIRE_POSTGRES=1``, so in CI a missing server fails instead of skipping)."""

from __future__ import annotations

import uuid

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from configurator.service.migrations import HEAD, SCRIPT_LOCATION, VERSION_TABLE  # noqa: E402
from configurator.service.store import Store  # noqa: E402
from service_helpers import fresh_postgres_database, postgres_url  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'store.db'}")
    s = Store(postgres_url())
    with s.engine.begin() as conn:  # a clean slate for each test
        conn.execute(sqlalchemy.text("DELETE FROM jobs"))
        conn.execute(sqlalchemy.text("DELETE FROM clusters"))
        conn.execute(sqlalchemy.text("DELETE FROM health"))
    return s


def test_migrations_are_recorded_and_idempotent(store) -> None:  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(SCRIPT_LOCATION).get_current_head() == HEAD  # HEAD names the newest revision file
    assert store.migrate() == HEAD
    Store(store.url)  # opening again applies nothing twice
    with store.engine.connect() as conn:
        revisions = [r[0] for r in conn.execute(sqlalchemy.text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    assert revisions == [HEAD]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):  # type: ignore[no-untyped-def]
    """An empty database: a file, or a fresh database on the test server (``<db>_migrate``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    yield fresh_postgres_database("migrate")


def _revision_statements(revision: str) -> tuple[str, ...]:
    import importlib.util
    from pathlib import Path

    path = next(Path(SCRIPT_LOCATION, "versions").glob(f"{revision}_*.py"))
    spec = importlib.util.spec_from_file_location(f"rev{revision}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.STATEMENTS


def test_a_store_of_the_oldest_schema_is_upgraded_with_its_data(empty_url) -> None:  # type: ignore[no-untyped-def]
    """The oldest schema: version 1 of the hand-kept list that came before Alembic (``schema_version``)."""
    engine = sqlalchemy.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
                                     "name VARCHAR(200) NOT NULL, applied VARCHAR(32) NOT NULL)"))
        for statement in _revision_statements("0001"):
            conn.execute(sqlalchemy.text(statement))
        conn.execute(sqlalchemy.text("INSERT INTO schema_version VALUES (1, 'jobs and clusters', 'then')"))
        conn.execute(sqlalchemy.text("INSERT INTO jobs (id, cache_key, status, progress, request, result, created, "
                                     "updated) VALUES ('old', 'k', 'done', 1, '{}', '{\"plans\": [1]}', 't', 't')"))
        conn.execute(sqlalchemy.text("INSERT INTO clusters VALUES ('lab', 1, '{\"v\": 1}', 't')"))
    engine.dispose()
    store = Store(empty_url)
    assert store.get_job("old").result == {"plans": [1]} and store.find_reusable("k").id == "old"
    assert store.get_cluster("lab") == (1, {"v": 1})  # the `deleted` column of revision 0002 exists
    assert store.add_cluster("lab", {"v": 2}) == 2
    job, created = store.create_or_join("k2", {})  # revisions 0003/0004: leases, the in-flight key
    assert created and store.claim("t", by="h:1").id == job.id
    with store.engine.connect() as conn:
        assert conn.execute(sqlalchemy.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == HEAD
    store.engine.dispose()


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


# ----- claims through the database (several servers and worker hosts on one store) -----

def test_each_job_is_claimed_by_one_claimer_oldest_first(store) -> None:  # type: ignore[no-untyped-def]
    first = store.create_job(uuid.uuid4().hex, {"n": 1})
    second = store.create_job(uuid.uuid4().hex, {"n": 2})
    a, b = store.claim("a" * 8), store.claim("b" * 8)
    assert (a.id, b.id) == (first.id, second.id) and a.status == b.status == "running"
    assert store.claim("c" * 8) is None  # both held under live leases
    assert store.claim("d" * 8, job_id=first.id) is None


def test_concurrent_claimers_never_share_a_job(store) -> None:  # type: ignore[no-untyped-def]
    import threading

    ids = {store.create_job(uuid.uuid4().hex, {"n": i}).id for i in range(24)}
    got: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while True:
            job = store.claim(str(uuid.uuid4()))
            if job is None:
                return
            with lock:
                got.append(job.id)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # every job once: none twice, none left


def test_an_expired_lease_is_taken_over_and_the_late_owner_cannot_finish(store) -> None:  # type: ignore[no-untyped-def]
    import time

    job = store.create_job(uuid.uuid4().hex, {"n": 1})
    assert store.claim("dead-host", lease_s=0.3, by="host-a:1").id == job.id
    assert store.renew(job.id, "dead-host", 0.3)  # the heartbeat holds it
    assert store.claim("other", lease_s=30) is None
    time.sleep(0.5)  # no heartbeat: the lease expires
    taken = store.claim("other", lease_s=30, by="host-b:2")
    assert taken.id == job.id
    assert not store.renew(job.id, "dead-host", 30)  # the late host learns it lost the job
    assert not store.update_job(job.id, status="done", result={"plans": ["late"]}, lease="dead-host")
    assert store.update_job(job.id, status="done", result={"plans": ["owner"]}, lease="other")
    done = store.get_job(job.id)
    assert done.status == "done" and done.result == {"plans": ["owner"]}
    with store.engine.connect() as conn:
        row = conn.execute(sqlalchemy.text("SELECT attempts, lease_owner, claimed_by FROM jobs WHERE id = :i"),
                           {"i": job.id}).one()
    assert tuple(row) == (2, None, "host-b:2")


def test_one_in_flight_job_per_cache_key_across_servers(store) -> None:  # type: ignore[no-untyped-def]
    key = uuid.uuid4().hex
    job, created = store.create_or_join(key, {"n": 1})
    again, created_again = Store(store.url).create_or_join(key, {"n": 1})  # a second server, same store
    assert created and not created_again and again.id == job.id
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        store.create_job(key, {"n": 1})  # the database itself refuses a second in-flight job
    store.update_job(job.id, status="failed", error="x")
    retry, created = store.create_or_join(key, {"n": 1})
    assert created and retry.id != job.id  # a failed job does not block a new one


def test_upgrade_from_revision_2_keeps_one_of_duplicate_in_flight_jobs(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", SCRIPT_LOCATION)
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        for job_id in ("a", "b"):
            conn.execute(sqlalchemy.text("INSERT INTO jobs (id, cache_key, status, progress, request, created, updated) "
                                         "VALUES (:i, 'same', 'queued', 0, '{}', 'then', 'then')"), {"i": job_id})
    store = Store(url)
    assert [j.id for j in store.unfinished_jobs()] == ["a"]
    assert store.get_job("b").status == "failed" and "superseded" in store.get_job("b").error
    assert store.claim("t").id == "a"


def test_processes_opening_a_fresh_sqlite_store_at_once_migrate_it_once(tmp_path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code = f"from configurator.service.store import Store; print(Store({url!r}).migrate())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-400:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [HEAD] * 4


def test_processes_checking_a_fresh_store_at_once_never_collide_on_its_health_row(store) -> None:  # type: ignore[no-untyped-def]
    """A server and a worker host opening a fresh store at once both write the health row. Before, each updated it,
    found none and inserted it, and the second insert failed (IntegrityError: the worker host exited at start-up in
    the scale-out test). Here another connection has inserted the row but not committed it while the store checks
    it: the check waits for that commit (PostgreSQL) or for the write lock (SQLite), then succeeds."""
    import threading

    raced = store.engine.connect()
    pending = raced.begin()
    raced.execute(sqlalchemy.text("INSERT INTO health (id, checked) VALUES (1, 'other process')"))
    errors: list[BaseException] = []

    def check() -> None:
        try:
            store.check_writable()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    checker = threading.Thread(target=check)
    checker.start()
    checker.join(timeout=1.0)  # it waits on the uncommitted row (or SQLite's write lock)
    pending.commit()
    raced.close()
    checker.join(timeout=60)
    assert not checker.is_alive() and not errors, errors
    with store.engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT id, checked FROM health")).all()
    assert len(rows) == 1 and rows[0][1] != "other process"  # the check's write came after the other's
