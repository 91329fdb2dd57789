"""Autogenerate options shared by ``env.py``, the drift check and ``scripts/new_migration.sh``."""

from __future__ import annotations

from typing import Any, Literal

from alembic.autogenerate.api import AutogenContext
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, DateTime, Double, Float
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine

from myx.server.db.base import UtcDateTime

# "mariadb" when a URL names the MariaDB dialect itself (mariadb+driver://).
MYSQL_DIALECTS = ("mysql", "mariadb")


def context_options() -> dict[str, Any]:
    """Keyword arguments for ``EnvironmentContext.configure`` / ``MigrationContext.configure``."""
    return {
        # SQLite cannot ALTER most things: batch mode copies the table (and is plain ALTER elsewhere).
        "render_as_batch": True,
        "compare_type": compare_type,
        "render_item": render_item,
    }


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render our TypeDecorators as plain SQLAlchemy types: a migration never imports ``myx``."""
    if type_ != "type" or not isinstance(obj, TypeDecorator):
        return False
    if isinstance(obj, UtcDateTime):
        if autogen_context.imports is not None:
            autogen_context.imports.add("from sqlalchemy.dialects import mysql")
        return "sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), 'mysql', 'mariadb')"
    raise NotImplementedError(
        f"no migration rendering for {type(obj).__name__}: add one to myx.server.db.migrations.hooks"
    )


def compare_type(
    context: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_type: TypeEngine[Any],
    metadata_type: TypeEngine[Any],
) -> bool | None:
    """True if the column's type differs from the model's; None: Alembic's own comparison decides.

    Only the deliberate mappings of the migrations are accepted here; anything else is a difference.
    """
    dialect = context.dialect.name
    if isinstance(metadata_type, UtcDateTime):
        return not _is_utc_datetime_column(inspected_type, dialect)
    if _is_plain_float(metadata_type):
        # The migrations store a Float as double precision (MySQL's FLOAT is single precision).
        return not isinstance(inspected_type, Double)
    return None


def _is_utc_datetime_column(inspected: TypeEngine[Any], dialect: str) -> bool:
    if not isinstance(inspected, DateTime):
        return False
    if dialect == "postgresql":
        return bool(inspected.timezone)  # timestamptz: PostgreSQL keeps the instant
    if dialect in MYSQL_DIALECTS:
        return isinstance(inspected, mysql.DATETIME) and inspected.fsp == 6  # with microseconds
    return True


def _is_plain_float(metadata_type: TypeEngine[Any]) -> bool:
    return (
        isinstance(metadata_type, Float)
        and not isinstance(metadata_type, Double)
        and metadata_type.precision is None
    )
