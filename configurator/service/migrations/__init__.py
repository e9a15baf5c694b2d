"""The store's schema migrations, with Alembic (the SQLAlchemy project's migration tool).

``versions/`` holds one revision per schema change (``0001`` ... ``HEAD``), applied in order by
``Store.migrate``; Alembic records the applied revision in the table ``configurator_schema_revision`` (not
``alembic_version``: Optuna keeps its own Alembic history in the same database). Stores made before Alembic
(the ``schema_version`` table of the hand-kept list) are stamped with their last applied version first.

A new change: add ``versions/NNNN_<what>.py`` with ``down_revision`` the previous head, and raise ``HEAD``.
"""

from __future__ import annotations

from pathlib import Path

HEAD = "0005"
"""The newest revision: a store already at it is not opened by Alembic at all (every job process opens the store)."""
VERSION_TABLE = "configurator_schema_revision"
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)

__all__ = ["HEAD", "SCRIPT_LOCATION", "VERSION_TABLE"]
