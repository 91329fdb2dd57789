"""The Alembic migrations on real SQLite, PostgreSQL and MariaDB databases (a fresh one per test).

The drift check (``test_migrated_schema_matches_models``) is what makes a model change without a
migration fail CI: write one with ``scripts/new_migration.sh "message"``.
"""

from __future__ import annotations

import asyncio
import io
import os
import pprint
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    DateTime,
    Double,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    inspect,
    select,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from myx.server.db import migrate
from myx.server.db.base import Base, UtcDateTime, make_engine, make_sessionmaker
from myx.server.db.migrations.hooks import context_options
from myx.server.db.models import (
    Agent,
    AgentEvent,
    ApiToken,
    Batch,
    Command,
    Host,
    OutputChunk,
    User,
)
from myx.server.settings import Settings

MODEL_TABLES = set(Base.metadata.tables)
HEAD = migrate.head_revisions()[0]


# --- helpers ------------------------------------------------------------------------------------


def raw_engine(url: str) -> AsyncEngine:
    return create_async_engine(migrate.async_url(url), poolclass=NullPool)


async def table_names(url: str) -> set[str]:
    engine = raw_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def differences(url: str, metadata: MetaData, before: MetaData | None = None) -> list[Any]:
    """compare_metadata against ``metadata``, with the options autogenerate uses (env.py's)."""

    def compare(connection: Connection) -> list[Any]:
        if before is not None:
            before.create_all(connection)
            connection.commit()
        context = MigrationContext.configure(connection, opts=context_options())
        return list(compare_metadata(context, metadata))

    engine = raw_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


def summary(diffs: list[Any]) -> set[tuple[str, str, str | None]]:
    """(operation, table, column or index) for each difference Alembic reports."""
    found: set[tuple[str, str, str | None]] = set()
    for diff in diffs:
        for entry in diff if isinstance(diff, list) else [diff]:
            kind = entry[0]
            if kind in ("add_table", "remove_table"):
                found.add((kind, entry[1].name, None))
            elif kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
                found.add((kind, entry[1].table.name, entry[1].name))
            elif kind in ("add_column", "remove_column"):
                found.add((kind, entry[2], entry[3].name))
            else:  # modify_type, modify_nullable, ...: (kind, schema, table, column, ...)
                found.add((kind, entry[2], entry[3]))
    return found


def copy_of_models() -> MetaData:
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    return metadata


def backend_of(url: str) -> str:
    return url.split(":", 1)[0]


def column_values(obj: Any) -> dict[str, Any]:
    return {attr.key: getattr(obj, attr.key) for attr in inspect(type(obj)).column_attrs}


# --- the migration cycle ------------------------------------------------------------------------


def test_upgrade_creates_every_table(database_url: str) -> None:
    async def scenario() -> None:
        assert await migrate.current_revision(database_url) is None
        assert not await migrate.check_up_to_date(database_url)

        await migrate.upgrade(database_url)

        assert await table_names(database_url) == MODEL_TABLES | {"alembic_version"}
        assert await migrate.current_revision(database_url) == HEAD
        assert await migrate.check_up_to_date(database_url)

    asyncio.run(scenario())


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    async def scenario() -> None:
        await migrate.upgrade(database_url)
        await migrate.upgrade(database_url)  # at head already: nothing to do
        assert await migrate.current_revision(database_url) == HEAD

        await migrate.downgrade(database_url, "base")
        assert await table_names(database_url) == {"alembic_version"}
        assert await migrate.current_revision(database_url) is None
        assert not await migrate.check_up_to_date(database_url)

        await migrate.upgrade(database_url)
        assert await table_names(database_url) == MODEL_TABLES | {"alembic_version"}
        assert await migrate.current_revision(database_url) == HEAD
        assert await differences(database_url, Base.metadata) == []

    asyncio.run(scenario())


def test_concurrent_upgrades_apply_each_revision_once(database_url: str) -> None:
    """Server workers starting together all upgrade: they queue on a lock, the rest find it done."""
    code = "import asyncio, sys; from myx.server.db import migrate; asyncio.run(migrate.upgrade(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    async def scenario() -> None:
        # And within one process (Alembic's module-level proxies allow one command at a time).
        await asyncio.gather(*(migrate.upgrade(database_url) for _ in range(3)))
        assert await migrate.current_revision(database_url) == HEAD
        assert await migrate.schema_differences(database_url) == []

    asyncio.run(scenario())


def test_upgrade_on_the_callers_connection(database_url: str) -> None:
    """env.py runs on a connection given in config.attributes (the caller owns the transaction)."""

    async def scenario() -> None:
        engine = raw_engine(database_url)
        try:
            async with engine.begin() as connection:

                def run(sync_connection: Connection) -> None:
                    config = migrate.alembic_config(database_url)
                    config.attributes["connection"] = sync_connection
                    command.upgrade(config, "head")

                await connection.run_sync(run)
        finally:
            await engine.dispose()
        assert await migrate.current_revision(database_url) == HEAD
        assert await table_names(database_url) == MODEL_TABLES | {"alembic_version"}

    asyncio.run(scenario())


# --- drift: the migrations must build exactly what the models describe --------------------------


def test_migrated_schema_matches_models(database_url: str) -> None:
    async def scenario() -> list[Any]:
        await migrate.upgrade(database_url)
        return await migrate.schema_differences(database_url)

    diffs = asyncio.run(scenario())
    assert diffs == [], (
        "the models differ from what the migrations build; add a migration with "
        f'scripts/new_migration.sh "message":\n{pprint.pformat(diffs)}'
    )


def test_drift_check_sees_model_changes(database_url: str) -> None:
    changed = copy_of_models()
    hosts = changed.tables["hosts"]
    hosts.append_column(Column("rack", String(32), nullable=True))
    Index("ix_hosts_address", hosts.c.address)
    Table("host_groups", changed, Column("id", Integer, primary_key=True))
    changed.tables["users"].c.username.type = String(32)
    changed.tables["agents"].c.cert_not_after.type = String(40)  # was UtcDateTime
    changed.tables["commands"].c.timeout.type = Integer()  # was Float

    async def scenario() -> list[Any]:
        await migrate.upgrade(database_url)
        return await differences(database_url, changed)

    assert summary(asyncio.run(scenario())) == {
        ("add_table", "host_groups", None),
        ("add_column", "hosts", "rack"),
        ("add_index", "hosts", "ix_hosts_address"),
        ("modify_type", "users", "username"),
        ("modify_type", "agents", "cert_not_after"),
        ("modify_type", "commands", "timeout"),
    }


def test_compare_type_hook_accepts_only_the_migrations_mappings(database_url: str) -> None:
    """UtcDateTime must be timestamptz / DATETIME(6); Float must be double precision."""
    in_database = MetaData()
    Table(
        "probe",
        in_database,
        Column("id", Integer, primary_key=True),
        Column("naive_at", DateTime()),  # no time zone on PostgreSQL, no microseconds on MySQL
        Column("good_at", DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql")),
        Column("single", Float()),  # FLOAT: single precision on MySQL, not DOUBLE on SQLite
        Column("double", Double()),
    )
    in_models = copy_of_models()
    Table(
        "probe",
        in_models,
        Column("id", Integer, primary_key=True),
        Column("naive_at", UtcDateTime()),
        Column("good_at", UtcDateTime()),
        Column("single", Float()),
        Column("double", Float()),
    )

    async def scenario() -> list[Any]:
        await migrate.upgrade(database_url)
        return await differences(database_url, in_models, before=in_database)

    expected = {
        "sqlite": {("modify_type", "probe", "single")},
        "postgresql": {("modify_type", "probe", "naive_at")},
        "mysql": {("modify_type", "probe", "naive_at"), ("modify_type", "probe", "single")},
    }[backend_of(database_url)]
    assert summary(asyncio.run(scenario())) == expected


# --- data: every model through the migrated schema and the application's engine ------------------


def test_round_trip_of_every_model(database_url: str) -> None:
    shanghai = timezone(timedelta(hours=8))
    at = datetime(2031, 2, 3, 4, 5, 6, 789012, tzinfo=shanghai)
    later = datetime(2031, 2, 3, 23, 59, 59, 999999, tzinfo=UTC)
    blob = os.urandom(3 * 1024 * 1024) + bytes(range(256))
    text = "héllo wörld — 你好，世界 🚀 ∑ \t tabs\nand lines 'quotes' \"double\" \\ backslash"

    user = User(username="ädmin-管理员", password_hash="$argon2id$v=19$m=65536", is_admin=True, created_at=at)
    host = Host(
        name="web-01.例子.test",
        address="2001:db8::1",
        labels={"env": "prod", "区域": "上海", "emoji": "🚀", "empty": ""},
        description=text,
        created_at=at,
        updated_at=later,
    )

    async def scenario() -> None:
        await migrate.upgrade(database_url)
        engine = make_engine(Settings(database_url=database_url).db_url)
        sessions = make_sessionmaker(engine)
        try:
            async with sessions() as session, session.begin():
                session.add_all([user, host])
                await session.flush()
                agent = Agent(
                    host_id=host.id,
                    mode="connect",
                    token_enc="t" * 4000,
                    secret_enc=text,
                    rpc_port=65535,
                    rpc_path="p4th-0123456789abcdef",
                    status="online",
                    version="1.2.3",
                    cert_fingerprint=":".join(["AB"] * 32),
                    cert_not_after=later,
                    custom_cert=True,
                    rpc_supported=False,
                    rpc_last_check=at,
                    rpc_last_success=later,
                    last_heartbeat=at,
                    last_error=text,
                    consecutive_failures=7,
                    needs_reinstall=True,
                    metrics={"cpu": [0.5, 1.25, 99.999], "mem": {"total": 2**40, "swap": None}, "ok": True},
                    metrics_at=later,
                    created_at=at,
                )
                batch = Batch(
                    id="B4tchIdCaseSensitive0123456789ab",
                    target=["web-*", "label:区域=上海"],
                    kind="command",
                    command="sh",
                    args=["-c", "echo ✓"],
                    timeout=12345.678901234,
                    max_concurrency=1000,
                    batch_size=50,
                    max_failures=None,
                    status="running",
                    status_reason=None,
                    created_by=user.id,
                    created_at=at,
                    finished_at=None,
                )
                session.add_all([agent, batch])
                await session.flush()
                cmd = Command(
                    id="C0mmandIdCaseSensitive012345678",
                    host_id=host.id,
                    host_name=host.name,
                    batch_id=batch.id,
                    kind="command",
                    command="printf",
                    args=["%s", text, ""],
                    extra_enc="ZW5jcnlwdGVk",
                    timeout=0.1,
                    status="success",
                    status_reason="exited",
                    exit_code=-9,
                    signal="SIGKILL",
                    output_offset=5_000_000_123,
                    output_truncated=True,
                    created_by=user.id,
                    created_at=at,
                    dispatched_at=at,
                    started_at=later,
                    finished_at=later,
                )
                session.add(cmd)
                await session.flush()
                rows = [
                    ApiToken(
                        id="Tok3nIdAbc",
                        user_id=user.id,
                        name="ci 🤖",
                        secret_hash="ab" * 32,
                        created_at=at,
                        last_used_at=later,
                        expires_at=None,
                    ),
                    OutputChunk(command_id=cmd.id, offset=2**40, stream="stdout", data=blob),
                    OutputChunk(command_id=cmd.id, offset=2**40 + len(blob), stream="stderr", data=b""),
                    AgentEvent(
                        host_id=host.id, old_status="unknown", new_status="online", reason=text, created_at=at
                    ),
                ]
                session.add_all(rows)
                await session.flush()
                written = [user, host, agent, batch, cmd, *rows]
                expected = [(type(obj), column_values(obj)) for obj in written]

            async with sessions() as session:
                for model, values in expected:
                    key = [values[col.key] for col in inspect(model).primary_key]
                    row = await session.get(model, tuple(key))
                    assert row is not None, (model, key)
                    got = column_values(row)
                    assert got == values, model.__name__
                    for name, value in got.items():
                        if isinstance(value, datetime):
                            assert value.utcoffset() == timedelta(0), (model.__name__, name, value)
                            assert value.tzinfo is not None
                chunk = await session.scalar(select(OutputChunk).where(OutputChunk.stream == "stdout"))
                assert chunk is not None
                assert len(chunk.data) == len(blob)
                assert chunk.data == blob
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_constraints_and_cascades(database_url: str) -> None:
    """The foreign keys, unique constraints and collation the migration builds, on every backend."""
    at = datetime(2030, 1, 1, tzinfo=UTC)

    async def scenario() -> None:
        await migrate.upgrade(database_url)
        engine = make_engine(Settings(database_url=database_url).db_url)
        sessions = make_sessionmaker(engine)
        try:
            async with sessions() as session, session.begin():
                # Exact, case-sensitive comparison everywhere (utf8mb4_bin on MySQL).
                admin = User(username="admin", password_hash="x", created_at=at)
                session.add_all([admin, User(username="Admin", password_hash="x", created_at=at)])
                host = Host(name="h1", address="10.0.0.1", created_at=at, updated_at=at)
                session.add(host)
                await session.flush()
                session.add_all(
                    [
                        Agent(
                            host_id=host.id,
                            token_enc="t",
                            secret_enc="s",
                            rpc_port=9000,
                            rpc_path="p",
                            created_at=at,
                        ),
                        AgentEvent(host_id=host.id, old_status="a", new_status="b", created_at=at),
                        ApiToken(id="tok", user_id=admin.id, secret_hash="h", created_at=at),
                        Command(
                            id="c1",
                            host_id=host.id,
                            host_name="h1",
                            command="true",
                            timeout=1,
                            created_by=admin.id,
                            created_at=at,
                        ),
                    ]
                )
                await session.flush()
                session.add(OutputChunk(command_id="c1", offset=0, stream="stdout", data=b"x"))

            with pytest.raises(IntegrityError):
                async with sessions() as session, session.begin():
                    session.add(OutputChunk(command_id="c1", offset=0, stream="stderr", data=b"y"))
            with pytest.raises(IntegrityError):
                async with sessions() as session, session.begin():
                    session.add(OutputChunk(command_id="missing", offset=0, stream="stdout", data=b"y"))

            async with sessions() as session, session.begin():
                await session.execute(delete(Host).where(Host.name == "h1"))
                await session.execute(delete(User).where(User.username == "admin"))
            async with sessions() as session:
                assert (await session.scalars(select(Agent))).all() == []
                assert (await session.scalars(select(AgentEvent))).all() == []
                assert (await session.scalars(select(ApiToken))).all() == []
                cmd = await session.get(Command, "c1")
                assert cmd is not None
                assert (cmd.host_id, cmd.created_by) == (None, None)  # ON DELETE SET NULL
                assert [u.username for u in (await session.scalars(select(User))).all()] == ["Admin"]
            async with sessions() as session, session.begin():
                await session.execute(delete(Command))
            async with sessions() as session:
                assert (await session.scalars(select(OutputChunk))).all() == []
        finally:
            await engine.dispose()

    asyncio.run(scenario())


# --- migrate.py and the packaged scripts (no database server needed) -----------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///db/myx.db", ["CREATE TABLE command_output", "DATETIME", "BLOB"]),
        ("postgresql://u@h/db", ["CREATE TABLE command_output", "TIMESTAMP WITH TIME ZONE", "BYTEA"]),
        ("mysql://u@h/db", ["CREATE TABLE command_output", "DATETIME(6)", "LONGBLOB", "utf8mb4_bin"]),
    ],
)
def test_offline_sql(url: str, expected: list[str]) -> None:
    config = migrate.alembic_config(url)
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    for fragment in expected:
        assert fragment in sql
    assert "INSERT INTO alembic_version" in sql


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/myx/myx.db",
        "postgresql://postgres@127.0.0.1:5432/myx",
        "mysql://root@127.0.0.1:3306/myx",
        "mariadb://root:pw@db/myx",
        "postgresql+asyncpg://u@h/db",
    ],
)
def test_async_url_matches_settings(url: str) -> None:
    assert migrate.async_url(url) == Settings(database_url=url).db_url


def test_alembic_config_needs_no_ini_file() -> None:
    config = migrate.alembic_config("postgresql://user:p%40ss@db.example:5432/myx")
    assert config.config_file_name is None
    assert Path(config.get_main_option("script_location") or "") == migrate.MIGRATIONS_DIR
    assert config.get_main_option("sqlalchemy.url") == "postgresql+asyncpg://user:p%40ss@db.example:5432/myx"


def test_sqlite_file_and_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "myx.db"
    url = f"sqlite:///{path}"

    async def scenario() -> None:
        assert await migrate.current_revision(url) is None
        assert not path.parent.exists()  # looking did not create anything
        await migrate.upgrade(url)
        assert path.is_file()
        assert await migrate.check_up_to_date(url)

    asyncio.run(scenario())


def migration_files() -> list[Path]:
    versions = migrate.MIGRATIONS_DIR / "versions"
    return [path for path in sorted(versions.glob("*.py")) if path.stem[0].isdigit()]


def test_packaged_migrations_are_complete_and_linear() -> None:
    for name in ("__init__.py", "env.py", "script.py.mako", "versions/__init__.py"):
        assert (migrate.MIGRATIONS_DIR / name).is_file(), name
    script = ScriptDirectory(str(migrate.MIGRATIONS_DIR))
    assert len(script.get_heads()) == 1, "the migrations branched: merge the heads (alembic merge)"
    files = migration_files()
    assert len(files) == len(list(script.walk_revisions()))
    for path in files:
        # Migrations must not change meaning when application code does later.
        source = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+myx\b", source, re.MULTILINE), path.name
        revision = re.search(r'^revision: str = "(\w+)"', source, re.MULTILINE)
        assert revision is not None, path.name
        assert path.name.startswith(f"{revision.group(1)}_"), path.name
