"""The service's persistent store: plan jobs and registered cluster profiles, through SQLAlchemy.

SQLite by default (a file, no server), PostgreSQL by URL; the same code for both. The schema is
versioned with Alembic (``migrations/``): on open a store is upgraded to the newest revision, so a newer
service upgrades an older database and never guesses. Cluster profiles are versioned and never
overwritten: registering a name again adds version n+1.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

DEFAULT_LEASE_S = 30.0
"""How long a claim holds without a heartbeat: the supervisor renews every third of it, so two missed renewals
(a stalled store, a paused host) do not lose the job; a dead host's jobs are taken over after at most this."""
STATUSES = ("queued", "running", "done", "failed")
MAX_CLAIMS = 3
"""A job claimed this many times whose lease expired again (its worker died each time: a search that kills its
host) is failed with that reason instead of being claimed once more."""


def describe_store_error(exc: BaseException) -> str:
    """One line naming a storage fault ("store is read-only", "database is locked", ...), never a trace."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "store is read-only"
    if "locked" in text:
        return "database is locked"
    if "disk is full" in text or "no space" in text or "disk full" in text:
        return "store is full (no space left on its disk)"
    if "unable to open" in text or "could not connect" in text or "connection refused" in text:
        return "store cannot be opened"
    if "disk i/o" in text or isinstance(exc, OSError):
        return "store I/O error"
    return f"store error ({type(exc).__name__})"


def is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, (sa.exc.SQLAlchemyError, OSError))


class StoreError(RuntimeError):
    """A storage fault, named by ``describe_store_error``."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    id: str
    cache_key: str
    status: str
    progress: float
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "status": self.status, "progress": round(self.progress, 3),
                               "error": self.error, "plans": [], "search": None, "truncated": self.truncated}
        if self.result:
            out["plans"] = self.result.get("plans", [])
            out["search"] = self.result.get("search")
        return out

    @property
    def truncated(self) -> bool:
        """The search hit its time budget: an answer, but not the final one (never served as cached)."""
        return bool(((self.result or {}).get("search") or {}).get("truncated"))


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        self.migrate()

    def migrate(self) -> str:
        """Bring the schema to the newest revision with Alembic (``migrations/``); returns the revision.

        A store made before Alembic (its ``schema_version`` table, the hand-kept list of versions 1..4) is
        first stamped with its last applied version, so nothing is applied twice."""
        from configurator.service.migrations import HEAD, VERSION_TABLE

        with self.engine.connect() as conn:
            if VERSION_TABLE in sa.inspect(conn).get_table_names():
                current = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
                if current == HEAD:
                    return HEAD  # every job process opens the store: no Alembic start-up when up to date
        from alembic import command
        from alembic.config import Config

        from configurator.service.migrations import SCRIPT_LOCATION

        engine = self._migration_engine()
        with engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                # Several servers starting at once on one store: one migrates, the others wait and find it done.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7254019)"))
            config = Config()
            config.set_main_option("script_location", SCRIPT_LOCATION)
            config.attributes["connection"] = conn
            tables = sa.inspect(conn).get_table_names()
            if "schema_version" in tables and VERSION_TABLE not in tables:
                legacy = conn.execute(sa.text("SELECT MAX(version) FROM schema_version")).scalar()
                if legacy:
                    command.stamp(config, f"{int(legacy):04d}")
            command.upgrade(config, "head")
            revision = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        if engine is not self.engine:
            engine.dispose()
        return revision

    def _migration_engine(self) -> sa.engine.Engine:
        """SQLite: an engine whose transactions start with ``BEGIN IMMEDIATE`` (the write lock first, DDL inside the
        transaction), so two processes opening a fresh store at once migrate it one after the other; the second
        finds it at the head. Other databases: the store's engine."""
        if self.engine.dialect.name != "sqlite":
            return self.engine
        engine = sa.create_engine(self.url, future=True, poolclass=sa.pool.NullPool)

        @sa.event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _write_lock_first(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    # ----- jobs -----
    def create_job(self, cache_key: str, request: dict[str, Any]) -> Job:
        job_id = str(uuid.uuid4())
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO jobs (id, cache_key, status, progress, request, created, updated) "
                                 "VALUES (:id, :k, 'queued', 0, :r, :c, :c)"),
                         {"id": job_id, "k": cache_key, "r": json.dumps(request), "c": now})
        return self.get_job(job_id)  # type: ignore[return-value]

    def create_or_join(self, cache_key: str, request: dict[str, Any]) -> tuple[Job, bool]:
        """A new queued job, or the job already in flight for this cache key (``created`` False). The partial
        unique index decides across servers: the loser of a race gets ``IntegrityError`` and joins the winner."""
        try:
            return self.create_job(cache_key, request), True
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                row = conn.execute(sa.text("SELECT * FROM jobs WHERE cache_key = :k AND status IN ('queued', "
                                           "'running')"), {"k": cache_key}).first()
            if row is None:  # it finished between the insert and this read: the finished one answers
                found = self.find_reusable(cache_key)
                if found is None:
                    return self.create_job(cache_key, request), True
                return found, False
            return self._job(row), False

    def claim(self, token: str, lease_s: float = DEFAULT_LEASE_S, job_id: str | None = None,
              by: str | None = None) -> Job | None:
        """Claim one job (``job_id``, or the oldest claimable): a queued job, or a running one whose lease has
        expired. It becomes "running" under the lease ``token`` until ``lease_s`` from now; ``by`` (host:pid)
        is recorded for operators.

        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent claimers never wait on, or take, the
        same row. SQLite: one conditional ``UPDATE`` (SQLite runs one writer at a time)."""
        now = time.time()
        values: dict[str, Any] = {"t": token, "e": now + lease_s, "now": now, "u": _now(), "id": job_id,
                                  "by": (by or "")[:200] or None}
        claimable = "(status = 'queued' OR (status = 'running' AND (lease_expires IS NULL OR lease_expires < :now)))"
        only = " AND id = :id" if job_id is not None else ""
        claim = ("UPDATE jobs SET status = 'running', lease_owner = :t, lease_expires = :e, "
                 "attempts = attempts + 1, claimed_by = :by, updated = :u WHERE id = :picked AND " + claimable)
        with self.engine.begin() as conn:
            # A job whose workers died MAX_CLAIMS times is not handed to another host: it ends failed.
            conn.execute(sa.text("UPDATE jobs SET status = 'failed', lease_owner = NULL, progress = 1, updated = :u, "
                                 "error = :why WHERE status = 'running' AND lease_expires < :now AND "
                                 "attempts >= :cap"),
                         {**values, "cap": MAX_CLAIMS,
                          "why": f"its worker died or stalled past its lease {MAX_CLAIMS} times; not claimed again "
                                 "(a search that kills its host: see the workers' logs for the job id)"})
            if self.engine.dialect.name == "postgresql":
                picked = conn.execute(sa.text(f"SELECT id FROM jobs WHERE {claimable}{only} ORDER BY created "
                                              "LIMIT 1 FOR UPDATE SKIP LOCKED"), values).scalar()
                if picked is None:
                    return None
                conn.execute(sa.text(claim), {**values, "picked": picked})
            else:
                sub = f"(SELECT id FROM jobs WHERE {claimable}{only} ORDER BY created LIMIT 1)"
                if not conn.execute(sa.text(claim.replace(":picked", sub)), values).rowcount:
                    return None
            row = conn.execute(sa.text("SELECT * FROM jobs WHERE lease_owner = :t"), values).first()
        return self._job(row) if row else None

    def renew(self, job_id: str, token: str, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """The heartbeat: extend a lease still held; False when it was lost (expired and claimed by another)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.text("UPDATE jobs SET lease_expires = :e WHERE id = :id AND lease_owner = :t "
                                             "AND status = 'running'"),
                                     {"e": time.time() + lease_s, "id": job_id, "t": token}).rowcount)

    def park(self, job_id: str, token: str, until_s: float) -> bool:
        """Release a held job without finishing it: it stays "running" (so the in-flight key still joins it) with no
        owner, claimable again after ``until_s`` seconds; the claim does not count towards ``MAX_CLAIMS``. A split
        search's parent waits like this for its blocks (``split.py``), holding no worker."""
        with self.engine.begin() as conn:
            return bool(conn.execute(sa.text("UPDATE jobs SET lease_owner = NULL, lease_expires = :e, updated = :u, "
                                             "attempts = attempts - 1 WHERE id = :id AND lease_owner = :t AND "
                                             "status = 'running'"),
                                     {"e": time.time() + until_s, "u": _now(), "id": job_id, "t": token}).rowcount)

    def jobs_with_keys(self, keys: list[str]) -> dict[str, Job]:
        """The newest job of each cache key in ``keys`` (a split search's blocks, by their derived keys)."""
        found: dict[str, Job] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM jobs WHERE cache_key IN :keys ORDER BY created").bindparams(
                sa.bindparam("keys", expanding=True)), {"keys": list(keys)})
            for row in rows:
                found[row.cache_key] = self._job(row)
        return found

    def expired_leases(self, now: float) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM jobs WHERE status = 'running' AND "
                                            "lease_expires < :now"), {"now": now}).scalar() or 0)

    def count_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
            counts = {status: 0 for status in STATUSES}
            counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def _job(self, row: Any) -> Job:
        return Job(id=row.id, cache_key=row.cache_key, status=row.status, progress=row.progress,
                   request=json.loads(row.request), result=json.loads(row.result) if row.result else None,
                   error=row.error)

    def get_job(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).first()
        return self._job(row) if row else None

    def find_reusable(self, cache_key: str) -> Job | None:
        """A finished or still-running job for the same request, profile version and code version.

        A finished search that its time budget cut short is not reusable: a later identical request runs
        again and may finish it."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM jobs WHERE cache_key = :k AND status IN ('done', 'queued', "
                                        "'running') ORDER BY created DESC LIMIT 5"), {"k": cache_key})
            for row in rows:
                job = self._job(row)
                if not (job.status == "done" and job.truncated):
                    return job
        return None

    def check_writable(self) -> None:
        """A real write (the health row): raises the store's own error when it is read-only, locked or full.

        One upsert (``ON CONFLICT``: PostgreSQL 9.5+, SQLite 3.24+), not an update then an insert: a server and a
        worker host opening a fresh store at once both found no row to update, both inserted it, and the second
        process exited with "store error (IntegrityError)" (tests/test_store.py)."""
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO health (id, checked) VALUES (1, :c) "
                                 "ON CONFLICT (id) DO UPDATE SET checked = excluded.checked"), {"c": _now()})

    def update_job(self, job_id: str, *, status: str | None = None, progress: float | None = None,
                   result: dict[str, Any] | None = None, error: str | None = None,
                   only_if_unfinished: bool = False, lease: str | None = None) -> bool:
        """Write a job's fields; with ``lease`` only while that lease is held (a worker that lost its lease to
        another never overwrites the other's outcome), and a final or queued status releases the lease.
        Returns whether the row was written."""
        fields, values = ["updated = :u"], {"u": _now(), "id": job_id, "lease": lease}
        if status is not None:
            assert status in STATUSES
            fields.append("status = :s")
            values["s"] = status
        if progress is not None:
            fields.append("progress = :p")
            values["p"] = progress
        if result is not None:
            fields.append("result = :r")
            values["r"] = json.dumps(result)
        if error is not None:
            fields.append("error = :e")
            values["e"] = error
        if lease is not None and status in ("queued", "done", "failed"):
            fields.append("lease_owner = NULL")
        with self.engine.begin() as conn:
            where = " AND status IN ('queued', 'running')" if only_if_unfinished else ""
            if lease is not None:
                where += " AND lease_owner = :lease AND status = 'running'"
            return bool(conn.execute(sa.text(f"UPDATE jobs SET {', '.join(fields)} WHERE id = :id{where}"),
                                     values).rowcount)

    def unfinished_jobs(self) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created"))
            return [self._job(r) for r in rows]

    # ----- clusters -----
    def add_cluster(self, name: str, profile: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            # MAX over deleted versions too: a version number is never reused.
            current = conn.execute(sa.text("SELECT MAX(version) FROM clusters WHERE name = :n"), {"n": name}).scalar()
            version = (current or 0) + 1
            conn.execute(sa.text("INSERT INTO clusters (name, version, profile, created) VALUES (:n, :v, :p, :c)"),
                         {"n": name, "v": version, "p": json.dumps(profile), "c": _now()})
        return version

    def get_cluster(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            if version is None:
                row = conn.execute(sa.text("SELECT version, profile FROM clusters WHERE name = :n AND deleted IS NULL "
                                           "ORDER BY version DESC"), {"n": name}).first()
            else:
                row = conn.execute(sa.text("SELECT version, profile FROM clusters WHERE name = :n AND version = :v "
                                           "AND deleted IS NULL"), {"n": name, "v": version}).first()
        return (row[0], json.loads(row[1])) if row else None

    def list_clusters(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name, MAX(version) AS latest, COUNT(*) AS versions FROM clusters "
                                        "WHERE deleted IS NULL GROUP BY name ORDER BY name"))
            return [{"name": r.name, "latest_version": r.latest, "versions": r.versions} for r in rows]

    def cluster_versions(self, name: str) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT version FROM clusters WHERE name = :n AND deleted IS NULL "
                                        "ORDER BY version"), {"n": name})
            return [r[0] for r in rows]

    def delete_cluster(self, name: str, version: int | None = None) -> int:
        """Mark one version (or all versions) of a registered profile deleted; returns how many."""
        with self.engine.begin() as conn:
            extra = " AND version = :v" if version is not None else ""
            return conn.execute(sa.text(f"UPDATE clusters SET deleted = :d WHERE name = :n AND deleted IS NULL{extra}"),
                                {"d": _now(), "n": name, "v": version}).rowcount


__all__ = ["DEFAULT_LEASE_S", "Job", "MAX_CLAIMS", "STATUSES", "Store", "StoreError", "describe_store_error", "is_store_error"]
