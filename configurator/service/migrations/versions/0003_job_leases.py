"""Jobs are claimed through the database (several servers and worker hosts on one store): a claim holds a lease
(a token and an expiry, epoch seconds) that its worker's supervisor renews; a job whose lease expired (its host
died) is claimed again. At most one job per cache key is in flight: older duplicates (possible before this
revision) are failed first so that the partial unique index can be built."""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATEMENTS = (
    "ALTER TABLE jobs ADD COLUMN lease_owner VARCHAR(36)",
    "ALTER TABLE jobs ADD COLUMN lease_expires FLOAT",
    "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
    ("UPDATE jobs SET status = 'failed', error = 'superseded by an identical job (schema 3)' "
     "WHERE status IN ('queued', 'running') AND id NOT IN (SELECT MIN(id) FROM jobs "
     "WHERE status IN ('queued', 'running') GROUP BY cache_key)"),
    ("CREATE UNIQUE INDEX IF NOT EXISTS jobs_inflight_key ON jobs (cache_key) "
     "WHERE status IN ('queued', 'running')"),
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the store is only upgraded: restore a backup to go back")
