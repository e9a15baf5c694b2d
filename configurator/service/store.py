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
)
STATUSES = ("queued", "running", "done", "failed")


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
                               "error": self.error, "plans": [], "search": None}
        if self.result:
            out["plans"] = self.result.get("plans", [])
            out["search"] = self.result.get("search")
        return out


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
        """A finished or still-running job for the same request, profile version and code version."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("SELECT * FROM jobs WHERE cache_key = :k AND status IN ('done', 'queued', "
                                       "'running') ORDER BY created DESC"), {"k": cache_key}).first()
        return self._job(row) if row else None

    def update_job(self, job_id: str, *, status: str | None = None, progress: float | None = None,
                   result: dict[str, Any] | None = None, error: str | None = None) -> None:
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
            conn.execute(sa.text(f"UPDATE jobs SET {', '.join(fields)} WHERE id = :id"), values)

    def unfinished_jobs(self) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY created"))
            return [self._job(r) for r in rows]

    # ----- clusters -----
    def add_cluster(self, name: str, profile: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            current = conn.execute(sa.text("SELECT MAX(version) FROM clusters WHERE name = :n"), {"n": name}).scalar()
            version = (current or 0) + 1
            conn.execute(sa.text("INSERT INTO clusters (name, version, profile, created) VALUES (:n, :v, :p, :c)"),
                         {"n": name, "v": version, "p": json.dumps(profile), "c": _now()})
        return version

    def get_cluster(self, name: str, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            if version is None:
                row = conn.execute(sa.text("SELECT version, profile FROM clusters WHERE name = :n ORDER BY version "
                                           "DESC"), {"n": name}).first()
            else:
                row = conn.execute(sa.text("SELECT version, profile FROM clusters WHERE name = :n AND version = :v"),
                                   {"n": name, "v": version}).first()
        return (row[0], json.loads(row[1])) if row else None

    def list_clusters(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name, MAX(version) AS latest, COUNT(*) AS versions FROM clusters "
                                        "GROUP BY name ORDER BY name"))
            return [{"name": r.name, "latest_version": r.latest, "versions": r.versions} for r in rows]


__all__ = ["Job", "MIGRATIONS", "STATUSES", "Store"]
