"""Alembic environment of the control server (run by Alembic, configured by ``myx.server.db.migrate``).

Online, the migrations run on one of:

- the SQLAlchemy ``Connection`` in ``config.attributes["connection"]``: the caller's (for example
  ``await async_conn.run_sync(...)``); the caller owns its transaction and any locking;
- an engine of its own built from ``sqlalchemy.url``: with an async driver (the normal case) it runs
  ``asyncio.run`` here, so the Alembic command must be called where no event loop is running
  (``migrate.py`` uses a worker thread).
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection, create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from myx.server.db import models  # noqa: F401  (registers every table on Base.metadata)
from myx.server.db.base import Base
from myx.server.db.migrate import sqlite_path
from myx.server.db.migrations.hooks import MYSQL_DIALECTS, context_options

config = context.config
target_metadata = Base.metadata

# Two processes upgrading at once (several server workers starting together) must not both apply a
# revision: they queue on this lock and the second finds the database already at head.
LOCK_NAME = "myx_migrations"
LOCK_KEY = 0x6D7978  # "myx": pg advisory locks take a bigint
LOCK_TIMEOUT = 300


def run_migrations_offline() -> None:
    """Emit the SQL script (``alembic upgrade --sql``) for the URL's dialect; no database needed."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection, lock: bool = True) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, **context_options())
    with _mysql_lock(connection, lock), context.begin_transaction():
        if lock and connection.dialect.name == "postgresql":
            # Held until the migrations' transaction ends (DDL is transactional on PostgreSQL).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        context.run_migrations()


@contextmanager
def _mysql_lock(connection: Connection, lock: bool) -> Iterator[None]:
    """A session lock on MySQL/MariaDB, whose DDL commits implicitly (no transaction to hold a lock)."""
    if not lock or connection.dialect.name not in MYSQL_DIALECTS:
        yield
        return
    got = connection.execute(
        text("SELECT GET_LOCK(:name, :timeout)"), {"name": LOCK_NAME, "timeout": LOCK_TIMEOUT}
    ).scalar()
    # End the transaction the SELECT began so Alembic opens (and commits) its own; the lock stays.
    connection.commit()
    if got != 1:
        raise RuntimeError(f"could not take the MySQL lock {LOCK_NAME!r} within {LOCK_TIMEOUT} s")
    try:
        yield
    finally:
        connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": LOCK_NAME})
        connection.commit()


async def run_async_migrations(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        do_run_migrations(given, lock=False)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("sqlalchemy.url is not set: build the config with myx.server.db.migrate")
    with _sqlite_lock(url):
        if make_url(url).get_dialect().is_async:
            asyncio.run(run_async_migrations(url))
            return
        # A sync driver (e.g. psycopg given by a DBA): no event loop needed.
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with engine.connect() as connection:
                do_run_migrations(connection)
        finally:
            engine.dispose()


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """An exclusive lock file beside a SQLite database: its DDL cannot hold a lock for us."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    with open(f"{path}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        yield


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
