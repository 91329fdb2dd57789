"""Schema migrations, driven from code: ``myx db upgrade``, ``myx up`` and the server's startup check.

The Alembic scripts ship inside the package (``myx.server.db.migrations``); no ``alembic.ini``.
Every function takes a plain URL (``sqlite:///path``, ``postgresql://…``, ``mysql://…``,
``mariadb://…``) or an async one (``postgresql+asyncpg://…``) and may be awaited from a running
event loop.

``upgrade``/``downgrade`` run Alembic's (synchronous) command API in a worker thread, where
``env.py`` opens its own event loop and engine (``NullPool``): nothing bound to the caller's loop is
shared with it, which holds for aiosqlite, asyncpg and aiomysql alike, and the caller's loop keeps
serving while the DDL runs. The read-only checks use an engine on the caller's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

_T = TypeVar("_T")
_ALEMBIC_LOCK = threading.Lock()

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

_ASYNC_DRIVERS = (
    ("sqlite://", "sqlite+aiosqlite://"),
    ("postgresql://", "postgresql+asyncpg://"),
    ("mysql://", "mysql+aiomysql://"),
    ("mariadb://", "mysql+aiomysql://"),
)


def async_url(url: str) -> str:
    """The URL with the async driver MyX uses for a plain scheme (as ``Settings.db_url`` maps it)."""
    for plain, driver in _ASYNC_DRIVERS:
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def alembic_config(url: str) -> Config:
    """An Alembic ``Config`` for the packaged migrations and ``url`` (mapped to its async driver)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The option goes through ConfigParser interpolation: a %-encoded password needs "%%".
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision``; an empty database (or a missing SQLite file) is created."""
    config = alembic_config(url)
    sqlite_path(url, create_parent=True)
    await asyncio.to_thread(_run_command, command.upgrade, config, revision)


async def downgrade(url: str, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"``: drop every table)."""
    await asyncio.to_thread(_run_command, command.downgrade, alembic_config(url), revision)


def _run_command(fn: Callable[[Config, str], None], config: Config, revision: str) -> None:
    # alembic.context and alembic.op are process-wide proxies: one command at a time per process.
    # (Between processes, env.py's database lock serializes them.)
    with _ALEMBIC_LOCK:
        fn(config, revision)


def head_revisions() -> tuple[str, ...]:
    """The head revision(s) of the packaged migrations."""
    return tuple(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


async def current_revision(url: str) -> str | None:
    """The database's revision; None for an empty database (or a SQLite file that does not exist)."""
    heads = await _current_heads(url)
    if len(heads) > 1:
        raise RuntimeError(f"the database is at several revisions: {', '.join(sorted(heads))}")
    return heads[0] if heads else None


async def check_up_to_date(url: str) -> bool:
    """Whether the database is at the head of the packaged migrations (False: run ``upgrade``)."""
    return set(await _current_heads(url)) == set(head_revisions())


async def schema_differences(url: str) -> list[Any]:
    """Alembic's diff between the database and the models (``[]``: nothing for a migration to do).

    Uses the same comparison options as autogenerate, so a model change without a migration shows.
    """
    # Imported here: running the migrations themselves does not need the models.
    from myx.server.db import models  # noqa: F401  (registers every table on Base.metadata)
    from myx.server.db.base import Base
    from myx.server.db.migrations.hooks import context_options

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts=context_options())
        return list(compare_metadata(context, Base.metadata))

    return await _with_connection(url, compare)


async def _current_heads(url: str) -> tuple[str, ...]:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return ()  # connecting would leave an empty file behind

    def heads(connection: Connection) -> tuple[str, ...]:
        return tuple(MigrationContext.configure(connection).get_current_heads())

    return await _with_connection(url, heads)


async def _with_connection(url: str, fn: Callable[[Connection], _T]) -> _T:
    engine = create_async_engine(async_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(fn)
    finally:
        await engine.dispose()


def sqlite_path(url: str, create_parent: bool = False) -> Path | None:
    """The file of a SQLite URL (None for other backends, memory and ``file:`` URIs)."""
    parsed = make_url(async_url(url))
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or parsed.query.get("uri") in ("true", "1"):
        return None
    path = Path(database)
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path
