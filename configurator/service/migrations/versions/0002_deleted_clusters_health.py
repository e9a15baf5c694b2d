"""Deleted cluster profiles keep their rows (marked), so a name registered again continues the version count
and never reuses a version number that earlier cached answers were keyed on. ``health`` holds one row that
/healthz rewrites: a real write is the only way to learn that a store has become read-only."""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATEMENTS = (
    "ALTER TABLE clusters ADD COLUMN deleted VARCHAR(32)",
    "CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, checked VARCHAR(32) NOT NULL)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the store is only upgraded: restore a backup to go back")
