"""Alembic's environment: run on the connection ``Store.migrate`` passes in (no ini file, no URL of its own)."""

from __future__ import annotations

from alembic import context

from configurator.service.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
