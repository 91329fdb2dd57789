"""Table models (kept apart from the API schemas)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from myx.server.db.base import Base, BigId, Blob, Json, LongText, UtcDateTime, utcnow

# Command states. "lost": the agent no longer knows the command or went away while it ran.
PENDING, RUNNING, SUCCESS, FAILED, TIMEOUT, CANCELLED, LOST = (
    "pending", "running", "success", "failed", "timeout", "cancelled", "lost",
)  # fmt: skip
FINAL_STATES = (SUCCESS, FAILED, TIMEOUT, CANCELLED, LOST)
COMMAND_STATES = (PENDING, RUNNING, *FINAL_STATES)

AGENT_UNKNOWN, AGENT_ONLINE, AGENT_OFFLINE = "unknown", "online", "offline"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token: ``myx_<id>_<secret>``; only the secret's SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(Json, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    # SSH access for installs (seed 001 §3.1); the password and key are encrypted at rest.
    ssh_port: Mapped[int] = mapped_column(Integer, default=22)
    ssh_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ssh_password_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    ssh_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Where and how the agent is installed: install_dir, config_dir, state_dir, service_manager.
    install_options: Mapped[dict[str, str] | None] = mapped_column(Json, nullable=True, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    agent: Mapped[Agent] = relationship(back_populates="host", lazy="joined", cascade="all, delete-orphan")


class Agent(Base):
    """The agent on a host: identity, how to reach it, and what the heartbeats last saw (seed 001 §4.1)."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), unique=True)
    mode: Mapped[str] = mapped_column(String(16), default="listen")
    token_enc: Mapped[str] = mapped_column(Text)
    secret_enc: Mapped[str] = mapped_column(Text)
    rpc_port: Mapped[int] = mapped_column(Integer, unique=True)
    rpc_path: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=AGENT_UNKNOWN, index=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cert_fingerprint: Mapped[str | None] = mapped_column(String(95), nullable=True)
    cert_not_after: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    custom_cert: Mapped[bool] = mapped_column(Boolean, default=False)
    # A certificate the operator installed on the agent (seed 002): pinned, not issued by our CA.
    custom_cert_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    rpc_supported: Mapped[bool] = mapped_column(Boolean, default=True)
    rpc_last_check: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    rpc_last_success: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    needs_reinstall: Mapped[bool] = mapped_column(Boolean, default=False)
    # An operator stopped the agent on purpose (`agent/stop`): heartbeats failing then is no reason
    # to reinstall it automatically. Cleared when MyX starts, restarts or installs it again.
    stopped_by_operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    metrics: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    metrics_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    host: Mapped[Host] = relationship(back_populates="agent")


class Batch(Base):
    """One command fanned out over many hosts (群控), run in rolling waves."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    target: Mapped[list[str]] = mapped_column(Json)
    kind: Mapped[str] = mapped_column(String(16), default="command")
    command: Mapped[str] = mapped_column(Text)
    args: Mapped[list[str]] = mapped_column(Json, default=list)
    timeout: Mapped[float] = mapped_column(Double)
    max_concurrency: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    max_failures: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=RUNNING, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Command(Base):
    """One process on one agent (seed 001 §4.2), recorded before it is dispatched."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True)
    host_name: Mapped[str] = mapped_column(String(128))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="command")
    command: Mapped[str] = mapped_column(Text)
    args: Mapped[list[str]] = mapped_column(Json, default=list)
    # env and stdin may hold secrets: encrypted like agent tokens, kept so a restart can re-dispatch.
    extra_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    timeout: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    signal: Mapped[str | None] = mapped_column(String(16), nullable=True)
    output_offset: Mapped[int] = mapped_column(BigId, default=0)
    output_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    __table_args__ = (
        Index("ix_commands_status", "status"),
        Index("ix_commands_host_created", "host_id", "created_at"),
        Index("ix_commands_batch", "batch_id"),
    )


class OutputChunk(Base):
    """A stored run of one stream at ``offset`` of the command's combined output (the agent's offsets)."""

    __tablename__ = "command_output"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(ForeignKey("commands.id", ondelete="CASCADE"))
    offset: Mapped[int] = mapped_column(BigId)
    stream: Mapped[str] = mapped_column(String(8))
    data: Mapped[bytes] = mapped_column(Blob)

    __table_args__ = (UniqueConstraint("command_id", "offset", name="uq_command_output_offset"),)


DEPLOYMENT_STATES = (PENDING, RUNNING, SUCCESS, FAILED)


class Deployment(Base):
    """A tracked operation on a host (agent install, uninstall, upgrade...) with its one log."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    log: Mapped[str] = mapped_column(LongText, default="")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AgentEvent(Base):
    """A change of an agent's status, with why."""

    __tablename__ = "agent_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    old_status: Mapped[str] = mapped_column(String(16))
    new_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
