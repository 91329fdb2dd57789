"""Agents: stopped on purpose by an operator (no automatic reinstall then).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (with a default for the existing rows) on every back end, SQLite too: a
    # batch "move and copy" would need a live database, which offline SQL (`--sql`) does not have.
    op.add_column(
        "agents", sa.Column("stopped_by_operator", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("stopped_by_operator")
