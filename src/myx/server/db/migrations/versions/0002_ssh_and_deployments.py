"""SSH access and install options on hosts; deployments with their log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
JSON = sa.JSON().with_variant(mysql.JSON(), "mysql", "mariadb")
MYSQL_TABLE: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("ssh_port", sa.Integer(), nullable=False, server_default="22"))
        batch.add_column(sa.Column("ssh_user", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("ssh_password_enc", sa.Text(), nullable=True))
        batch.add_column(sa.Column("ssh_key_enc", sa.Text(), nullable=True))
        batch.add_column(sa.Column("install_options", JSON, nullable=True))
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_deployments_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_deployments_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        **MYSQL_TABLE,
    )
    op.create_index(op.f("ix_deployments_created_at"), "deployments", ["created_at"], unique=False)
    op.create_index(op.f("ix_deployments_host_id"), "deployments", ["host_id"], unique=False)


def downgrade() -> None:
    # Dropping the table drops its indexes; MySQL refuses to drop the FK's index on its own.
    op.drop_table("deployments")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("install_options")
        batch.drop_column("ssh_key_enc")
        batch.drop_column("ssh_password_enc")
        batch.drop_column("ssh_user")
        batch.drop_column("ssh_port")
