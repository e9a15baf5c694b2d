"""An index for the claim query: every idle worker pool asks for the oldest queued (or lease-expired running) job
twice a second, which without it scans every job the store ever ran."""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("the store is only upgraded: restore a backup to go back")
