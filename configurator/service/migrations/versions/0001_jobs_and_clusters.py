"""Plan jobs and registered cluster profiles (versioned, never overwritten)."""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = (
    """CREATE TABLE IF NOT EXISTS jobs (
            id VARCHAR(36) PRIMARY KEY, cache_key VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL,
            progress FLOAT NOT NULL DEFAULT 0, request TEXT NOT NULL, result TEXT, error TEXT,
            created VARCHAR(32) NOT NULL, updated VARCHAR(32) NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS jobs_cache_key ON jobs (cache_key)",
    """CREATE TABLE IF NOT EXISTS clusters (
            name VARCHAR(200) NOT NULL, version INTEGER NOT NULL, profile TEXT NOT NULL,
            created VARCHAR(32) NOT NULL, PRIMARY KEY (name, version))""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the store is only upgraded: restore a backup to go back")
