"""What the service tests share: a free loopback port, the live processes of a server's session (a server runs
in its own session; its fork server and job processes inherit it, so a leftover is found by session id), and the
test PostgreSQL server (skipped without one, a failure where CI requires it)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: bound all at once, so two calls of ``free_port`` cannot hand out the same one."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes whose session is ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def postgres_url() -> str:
    """The test server's URL (``CONFIGURATOR_TEST_PG_URL``); without one the test is skipped, or fails where
    ``CONFIGURATOR_REQUIRE_POSTGRES=1`` (CI) says it must run."""
    url = os.environ.get("CONFIGURATOR_TEST_PG_URL")
    if not url:
        if os.environ.get("CONFIGURATOR_REQUIRE_POSTGRES") == "1":
            pytest.fail("CONFIGURATOR_TEST_PG_URL is not set: start one with `bash .ci/postgres.sh`")
        pytest.skip("no PostgreSQL: set CONFIGURATOR_TEST_PG_URL (bash .ci/postgres.sh prints one)")
    return url


def fresh_postgres_database(suffix: str) -> str:
    """The URL of an empty database ``<test db>_<suffix>`` on the test server (dropped and created anew)."""
    import sqlalchemy

    base = sqlalchemy.engine.make_url(postgres_url())
    name = f"{base.database}_{suffix}"
    admin = sqlalchemy.create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)
