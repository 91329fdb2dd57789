"""API schemas (kept apart from the table models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from myx.protocol.methods import MAX_TIMEOUT
from myx.protocol.output import OutputChunk
from myx.server.db.models import Agent, Batch, Command, Deployment, Host

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
T = TypeVar("T")
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# auth


class LoginIn(Strict):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    token_name: str = Field("login", max_length=128)


class TokenOut(BaseModel):
    token: str
    username: str


class UserOut(BaseModel):
    id: int
    username: str
    is_admin: bool


# hosts


class SshIn(Strict):
    user: str = Field(min_length=1, max_length=64)
    port: int = Field(22, ge=1, le=65535)
    password: str | None = Field(None, max_length=1024)
    private_key: str | None = Field(None, max_length=64 << 10)

    @model_validator(mode="after")
    def _secret(self) -> SshIn:
        if not self.password and not self.private_key:
            raise ValueError("give a password or a private_key")
        return self


class InstallOptions(Strict):
    install_dir: str | None = Field(None, max_length=1024, pattern=r"^[^\x00]+$")
    config_dir: str | None = Field(None, max_length=1024, pattern=r"^[^\x00]+$")
    state_dir: str | None = Field(None, max_length=1024, pattern=r"^[^\x00]+$")
    service_manager: Literal["auto", "systemd", "supervisor"] | None = None
    bind_address: str | None = Field(None, max_length=255, pattern=r"^[^\s/]+$")

    def given(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HostCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    address: str = Field(min_length=1, max_length=255, pattern=r"^[^\s/]+$")
    labels: dict[str, str] = Field(default_factory=dict)
    description: str = Field("", max_length=2000)
    rpc_port: int | None = Field(None, ge=1, le=65535)
    ssh: SshIn | None = None
    install_options: InstallOptions | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        import re

        for key, value in labels.items():
            if not re.match(LABEL_KEY, key):
                raise ValueError(f"label key {key!r}: letters, digits, '_', '.', '/', '-' (max 63)")
            if len(value) > 255 or "=" in key:
                raise ValueError(f"label {key!r}: value too long (max 255)")
        return labels


class DeploymentOut(BaseModel):
    id: str
    host_id: int
    kind: str
    status: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    log_offset: int
    log: str
    log_size: int

    @classmethod
    def of(cls, d: Deployment, log_offset: int = 0) -> DeploymentOut:
        return cls(
            id=d.id,
            host_id=d.host_id,
            kind=d.kind,
            status=d.status,
            error=d.error,
            created_at=d.created_at,
            finished_at=d.finished_at,
            log_offset=log_offset,
            log=d.log[log_offset:],
            log_size=len(d.log),
        )


class AgentOut(BaseModel):
    status: str
    mode: str
    version: str | None
    rpc_port: int
    last_heartbeat: datetime | None
    last_error: str | None
    consecutive_failures: int
    needs_reinstall: bool
    stopped_by_operator: bool
    cert_fingerprint: str | None
    cert_not_after: datetime | None

    @classmethod
    def of(cls, agent: Agent) -> AgentOut:
        return cls(
            status=agent.status,
            mode=agent.mode,
            version=agent.version,
            rpc_port=agent.rpc_port,
            last_heartbeat=agent.last_heartbeat,
            last_error=agent.last_error,
            consecutive_failures=agent.consecutive_failures,
            needs_reinstall=agent.needs_reinstall,
            stopped_by_operator=agent.stopped_by_operator,
            cert_fingerprint=agent.cert_fingerprint,
            cert_not_after=agent.cert_not_after,
        )


class HostOut(BaseModel):
    id: int
    name: str
    address: str
    labels: dict[str, str]
    description: str
    created_at: datetime
    agent: AgentOut
    metrics: dict[str, Any] | None = None
    metrics_at: datetime | None = None

    @classmethod
    def of(cls, host: Host, detail: bool = False) -> HostOut:
        return cls(
            id=host.id,
            name=host.name,
            address=host.address,
            labels=host.labels or {},
            description=host.description,
            created_at=host.created_at,
            agent=AgentOut.of(host.agent),
            metrics=host.agent.metrics if detail else None,
            metrics_at=host.agent.metrics_at if detail else None,
        )


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class AgentEventOut(BaseModel):
    old_status: str
    new_status: str
    reason: str | None
    created_at: datetime


# commands


class CommandBody(Strict):
    """What to run: an argv command, a shell string (``shell``) or a script."""

    command: str | None = Field(None, min_length=1, max_length=65536)
    args: list[str] = Field(default_factory=list, max_length=4096)
    shell: bool = False
    script: str | None = Field(None, max_length=4 << 20)
    interpreter: str = Field("/bin/sh", min_length=1, max_length=4096)
    timeout: float = Field(300.0, gt=0, le=MAX_TIMEOUT)
    env: dict[str, str] | None = None
    cwd: str | None = Field(None, max_length=4096)
    stdin: str | None = Field(None, max_length=16 << 20)

    @model_validator(mode="after")
    def _one_of(self) -> CommandBody:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' and 'script'")
        if self.script is not None and self.shell:
            raise ValueError("'shell' applies to 'command', not to 'script'")
        return self


class CommandCreate(CommandBody):
    host: str | int


class CommandOut(BaseModel):
    id: str
    host_id: int | None
    host: str
    batch_id: str | None
    kind: str
    command: str
    args: list[str]
    timeout: float
    status: str
    status_reason: str | None
    exit_code: int | None
    signal: str | None
    output_bytes: int
    output_truncated: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration: float | None

    @classmethod
    def of(cls, c: Command) -> CommandOut:
        duration = (c.finished_at - c.started_at).total_seconds() if c.finished_at and c.started_at else None
        return cls(
            id=c.id,
            host_id=c.host_id,
            host=c.host_name,
            batch_id=c.batch_id,
            kind=c.kind,
            command=c.command,
            args=list(c.args or []),
            timeout=c.timeout,
            status=c.status,
            status_reason=c.status_reason,
            exit_code=c.exit_code,
            signal=c.signal,
            output_bytes=c.output_offset,
            output_truncated=c.output_truncated,
            created_at=c.created_at,
            started_at=c.started_at,
            finished_at=c.finished_at,
            duration=duration,
        )


class ChunkOut(BaseModel):
    offset: int
    stream: str
    data: str
    encoding: Literal["base64"] | None = None

    @classmethod
    def of(cls, chunk: OutputChunk) -> ChunkOut:
        wire = chunk.to_wire()
        return cls(offset=chunk.offset, stream=chunk.stream, data=wire["data"], encoding=wire.get("encoding"))


class OutputOut(BaseModel):
    command_id: str
    offset: int
    next_offset: int
    status: str
    complete: bool
    chunks: list[ChunkOut]


# batches


class BatchCreate(CommandBody):
    target: list[str] = Field(min_length=1, max_length=10000)
    max_concurrency: int = Field(50, ge=1)
    batch_size: int | None = Field(None, ge=1)
    max_failures: int | None = Field(None, ge=0)

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class BatchOut(BaseModel):
    id: str
    target: list[str]
    kind: str
    command: str
    args: list[str]
    status: str
    status_reason: str | None
    max_concurrency: int
    batch_size: int
    max_failures: int | None
    counts: dict[str, int]
    total: int
    created_at: datetime
    finished_at: datetime | None
    commands: list[CommandOut] | None = None

    @classmethod
    def of(cls, b: Batch, counts: dict[str, int], commands: list[Command] | None = None) -> BatchOut:
        return cls(
            id=b.id,
            target=list(b.target),
            kind=b.kind,
            command=b.command,
            args=list(b.args or []),
            status=b.status,
            status_reason=b.status_reason,
            max_concurrency=b.max_concurrency,
            batch_size=b.batch_size,
            max_failures=b.max_failures,
            counts=counts,
            total=sum(counts.values()),
            created_at=b.created_at,
            finished_at=b.finished_at,
            commands=[CommandOut.of(c) for c in commands] if commands is not None else None,
        )
