"""The service's persistent store: plan jobs and registered cluster profiles, through SQLAlchemy.

SQLite by default (a file, no server), PostgreSQL by URL; the same code for both. The schema is
versioned: ``MIGRATIONS`` are applied in order on open and recorded in ``schema_version``, so a newer
service upgrades an older database and never guesses. Cluster profiles are versioned and never
overwritten: registering a name again adds version n+1.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "jobs and clusters", (
        """CREATE TABLE IF NOT EXISTS jobs (
            id VARCHAR(36) PRIMARY KEY, cache_key VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL,
            progress FLOAT NOT NULL DEFAULT 0, request TEXT NOT NULL, result TEXT, error TEXT,
            created VARCHAR(32) NOT NULL, updated VARCHAR(32) NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_cache_key ON jobs (cache_key)",
        """CREATE TABLE IF NOT EXISTS clusters (
            name VARCHAR(200) NOT NULL, version INTEGER NOT NULL, profile TEXT NOT NULL,
            created VARCHAR(32) NOT NULL, PRIMARY KEY (name, version))""",
    )),
    # Deleted cluster profiles keep their rows (marked), so a name registered again continues the version
    # count and never reuses a version number that earlier cached answers were keyed on. `health` holds one
    # row that /healthz rewrites: a real write is the only way to learn that a store has become read-only.
    (2, "deleted clusters, health probe", (
        "ALTER TABLE clusters ADD COLUMN deleted VARCHAR(32)",
        "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked VARCHAR(32) NOT NULL)",
    )),
)
STATUSES = ("queued", "running", "done", "failed")


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

    def migrate(self) -> int:
        with self.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                                 "name VARCHAR(200) NOT NULL, applied VARCHAR(32) NOT NULL)"))
            done = {row[0] for row in conn.execute(sa.text("SELECT version FROM schema_version"))}
            for version, name, statements in MIGRATIONS:
                if version in done:
                    continue
                for statement in statements:
                    conn.execute(sa.text(statement))
                conn.execute(sa.text("INSERT INTO schema_version (version, name, applied) VALUES (:v, :n, :a)"),
                             {"v": version, "n": name, "a": _now()})
        return max(v for v, _, _ in MIGRATIONS)

    # ----- jobs -----
    def create_job(self, cache_key: str, request: dict[str, Any]) -> Job:
        job_id = str(uuid.uuid4())
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO jobs (id, cache_key, status, progress, request, created, updated) "
                                 "VALUES (:id, :k, 'queued', 0, :r, :c, :c)"),
                         {"id": job_id, "k": cache_key, "r": json.dumps(request), "c": now})
        return self.get_job(job_id)  # type: ignore[return-value]

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
        """A real write (the health row): raises the store's own error when it is read-only, locked or full."""
        with self.engine.begin() as conn:
            updated = conn.execute(sa.text("UPDATE health SET checked = :c WHERE id = 1"), {"c": _now()}).rowcount
            if not updated:
                conn.execute(sa.text("INSERT INTO health (id, checked) VALUES (1, :c)"), {"c": _now()})

    def update_job(self, job_id: str, *, status: str | None = None, progress: float | None = None,
                   result: dict[str, Any] | None = None, error: str | None = None,
                   only_if_unfinished: bool = False) -> None:
        fields, values = ["updated = :u"], {"u": _now(), "id": job_id}
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
        with self.engine.begin() as conn:
            where = " AND status IN ('queued', 'running')" if only_if_unfinished else ""
            conn.execute(sa.text(f"UPDATE jobs SET {', '.join(fields)} WHERE id = :id{where}"), values)

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


__all__ = ["Job", "MIGRATIONS", "STATUSES", "Store", "StoreError", "describe_store_error", "is_store_error"]
