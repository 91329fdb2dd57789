"""Commands: record first, dispatch at once, store output as it comes, survive restarts.

Each running command has one driver task: it dispatches ``execute_command`` (retried per seed
001 §6.4, safe because the agent runs a ``command_id`` at most once), then long-polls
``get_command_log`` from the offset already stored and commits every reply's chunks together
with the new offset in one transaction.  After a control-server restart or a lost connection
the driver resumes from the stored offset, so no byte is lost and none is stored twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from myx.protocol.errors import ErrorCode
from myx.protocol.output import OutputChunk as WireChunk
from myx.protocol.output import chunk_bytes
from myx.server.channels.base import AgentChannel, AgentEndpoint, AgentHttpError, AgentMethodError
from myx.server.db.base import utcnow
from myx.server.db.models import (
    AGENT_OFFLINE,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    LOST,
    PENDING,
    RUNNING,
    Agent,
    Command,
    Host,
    OutputChunk,
)
from myx.server.errors import AgentUnavailable, InvalidInput, NotFound, StateConflict
from myx.server.metrics import Metrics
from myx.server.security.crypto import SecretBox
from myx.server.services.events import EventBus, sleep_until
from myx.server.services.store import WriteQueue

log = logging.getLogger(__name__)

ROW_BYTES = 256 << 10  # stored chunk rows stay well under every backend's packet limits
FETCH_BYTES = 1 << 20
BUSY_RETRIES = 30
OFFLINE_REASON = "the agent went offline while the command was running"
_WIRE_STATES = ("success", "failed", "timeout", "cancelled")


@dataclass
class CommandRequest:
    command: str
    args: list[str] = field(default_factory=list)
    timeout: float = 300.0
    shell: bool = False
    script: str | None = None  # execute_script: ``command`` is then the interpreter
    playbook: bool = False  # execute_ansible: ``command`` is then the playbook path
    extra_vars: dict[str, Any] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    stdin: str | None = None

    @property
    def kind(self) -> str:
        if self.playbook:
            return "ansible"
        return "script" if self.script is not None else "shell" if self.shell else "command"

    def extras(self) -> dict[str, Any]:
        pairs = (
            ("env", self.env),
            ("cwd", self.cwd),
            ("stdin", self.stdin),
            ("script", self.script),
            ("extra_vars", self.extra_vars),
        )
        return {k: v for k, v in pairs if v is not None}


@dataclass
class OutputPage:
    command_id: str
    offset: int
    chunks: list[WireChunk]
    next_offset: int
    status: str
    complete: bool


@dataclass
class _Job:
    """What a driver needs, so a fresh command is dispatched without reading it back."""

    command_id: str
    host_id: int
    endpoint: AgentEndpoint
    method: str
    params: dict[str, Any]
    offset: int
    status: str


ChannelFactory = Any  # Callable[[AgentEndpoint], AgentChannel]; kept loose to avoid an import cycle


class CommandService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: WriteQueue,
        events: EventBus,
        box: SecretBox,
        channel_for: ChannelFactory,
        endpoint_for: Any,
        log_poll_wait: float = 20.0,
        rpc_timeout: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.writer = writer
        self.events = events
        self.box = box
        self.channel_for = channel_for
        self.endpoint_for = endpoint_for  # Callable[[Host], AgentEndpoint]
        self.log_poll_wait = log_poll_wait
        self.rpc_timeout = rpc_timeout
        self.metrics = metrics or Metrics()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    # creating and driving

    async def create(
        self,
        host: Host,
        request: CommandRequest,
        user_id: int | None,
        batch_id: str | None = None,
        start: bool = True,
    ) -> Command:
        """Record the command (pending) and, unless *start* is False, dispatch it at once."""
        [command] = await self.create_many([host], request, user_id, batch_id)
        if start:
            self.start(self._job(command, request, self.endpoint_for(host)))
        return command

    async def create_many(
        self, hosts: list[Host], request: CommandRequest, user_id: int | None, batch_id: str | None = None
    ) -> list[Command]:
        """Record one pending command per host in a single transaction."""
        if not request.command:
            raise InvalidInput("command must not be empty")
        sealed = self._seal(request.extras())
        now = utcnow()
        commands = [
            Command(
                id=uuid.uuid4().hex,
                host_id=host.id,
                host_name=host.name,
                batch_id=batch_id,
                kind=request.kind,
                command=request.command,
                args=list(request.args),
                extra_enc=sealed,
                timeout=request.timeout,
                status=PENDING,
                output_offset=0,
                created_by=user_id,
                created_at=now,
            )
            for host in hosts
        ]

        async def insert(session: AsyncSession) -> None:
            session.add_all(commands)

        await self.writer.submit(insert)
        for command in commands:
            self._publish(command)
        return commands

    def start_pending(self, command: Command, host: Host) -> None:
        """Dispatch a command recorded earlier with ``start=False`` (batches pace their own)."""
        self.start(self._job(command, self._request_of(command), self.endpoint_for(host)))

    def start(self, job: _Job) -> None:
        if self._closing or job.command_id in self._drivers:
            return
        task = asyncio.get_running_loop().create_task(self._drive(job), name=f"myx-command-{job.command_id}")
        self._drivers[job.command_id] = task
        task.add_done_callback(lambda _: self._drivers.pop(job.command_id, None))

    def is_driving(self, command_id: str) -> bool:
        return command_id in self._drivers

    async def resume_all(self) -> int:
        """After a restart: re-dispatch pending commands and resume running ones from their stored offset."""
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Command, Host)
                    .join(Host, Command.host_id == Host.id)
                    .where(Command.status.in_([PENDING, RUNNING]))
                )
            ).all()
            jobs = [self._job(c, self._request_of(c), self.endpoint_for(h)) for c, h in rows]
        for job in jobs:
            self.start(job)
        if jobs:
            log.info("resumed commands count=%d", len(jobs))
        return len(jobs)

    async def resume_host(self, host_id: int) -> None:
        """The agent is back: commands lost because it was offline may still be complete on it."""
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Command, Host)
                    .join(Host, Command.host_id == Host.id)
                    .where(
                        Command.host_id == host_id,
                        Command.status == LOST,
                        Command.status_reason == OFFLINE_REASON,
                    )
                )
            ).all()
            jobs = [self._job(c, self._request_of(c), self.endpoint_for(h), status=RUNNING) for c, h in rows]
        for job in jobs:
            self.start(job)

    async def stop(self) -> None:
        """Stop driving (the commands keep running on the agents and are resumed at the next start)."""
        self._closing = True
        tasks = list(self._drivers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _job(
        self, command: Command, request: CommandRequest, endpoint: AgentEndpoint, status: str | None = None
    ) -> _Job:
        params: dict[str, Any] = {"timeout": request.timeout, "command_id": command.id}
        if request.playbook:
            method = "execute_ansible"
            params["playbook"] = request.command
            if request.extra_vars:
                params["extra_vars"] = request.extra_vars
        elif request.script is not None:
            method = "execute_script"
            params.update(script=request.script, interpreter=request.command, args=request.args)
        else:
            method = "execute_command"
            params.update(command=request.command, shell=request.shell, args=request.args)
            if request.stdin is not None:
                params["stdin"] = request.stdin
        if request.env and not request.playbook:
            params["env"] = request.env
        if request.cwd and not request.playbook:
            params["cwd"] = request.cwd
        return _Job(
            command.id,
            endpoint.host_id,
            endpoint,
            method,
            params,
            command.output_offset,
            status or command.status,
        )

    def _request_of(self, command: Command) -> CommandRequest:
        extras = self._unseal(command.extra_enc)
        return CommandRequest(
            command=command.command,
            args=list(command.args or []),
            timeout=command.timeout,
            shell=command.kind == "shell",
            playbook=command.kind == "ansible",
            **extras,
        )

    def _seal(self, extras: dict[str, Any]) -> str | None:
        return self.box.encrypt(json.dumps(extras), aad="command-extras") if extras else None

    def _unseal(self, sealed: str | None) -> dict[str, Any]:
        return dict(json.loads(self.box.decrypt(sealed, aad="command-extras"))) if sealed else {}

    async def _drive(self, job: _Job) -> None:
        channel: AgentChannel = self.channel_for(job.endpoint)
        try:
            marked: asyncio.Future[bool] | None = None
            if job.status == PENDING:
                marked = await self._dispatch(job, channel)
                if marked is None:
                    return
            await self._pump(job, channel, marked)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("command driver failed id=%s", job.command_id)
            await self._finish(job.command_id, FAILED, f"internal error while following the command: {exc}")

    async def _dispatch(self, job: _Job, channel: AgentChannel) -> asyncio.Future[bool] | None:
        """Send the command; None when it could not be, else the pending 'running' write.

        The write is not awaited here: the first output fetch overlaps it, and the same write
        queue commits it before any output of the command.
        """
        for _ in range(BUSY_RETRIES):
            try:
                with self.metrics.dispatch_seconds.time():
                    await channel.call(job.method, job.params)
            except AgentMethodError as exc:
                if exc.rpc_code == ErrorCode.BUSY:
                    await asyncio.sleep(2.0)  # the agent is at its concurrency limit: queue here
                    continue
                await self._finish(job.command_id, FAILED, f"the agent refused the command: {exc.message}")
                return None
            except (AgentUnavailable, AgentHttpError) as exc:
                await self._finish(job.command_id, FAILED, f"could not dispatch: {exc.message}")
                return None
            return asyncio.ensure_future(self._mark_running(job.command_id))
        await self._finish(job.command_id, FAILED, "the agent stayed at its concurrency limit")
        return None

    async def _mark_running(self, command_id: str) -> bool:
        now = utcnow()

        async def op(session: AsyncSession) -> bool:
            result = await session.execute(
                update(Command)
                .where(Command.id == command_id, Command.status == PENDING)
                .values(status=RUNNING, dispatched_at=now, started_at=now)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

        running: bool = await self.writer.submit(op)
        self._wake(command_id, RUNNING)
        return running

    async def _pump(
        self, job: _Job, channel: AgentChannel, marked: asyncio.Future[bool] | None = None
    ) -> None:
        offset = job.offset
        failures = 0
        while True:
            params = {
                "command_id": job.command_id,
                "offset": offset,
                "wait": self.log_poll_wait,
                "limit": FETCH_BYTES,
            }
            try:
                reply = await channel.call(
                    "get_command_log", params, timeout=self.log_poll_wait + self.rpc_timeout
                )
            except AgentUnavailable as exc:
                failures += 1
                if await self._agent_offline(job.host_id):
                    await self._finish(job.command_id, LOST, OFFLINE_REASON)
                    return
                log.info("output fetch failed id=%s error=%s", job.command_id, exc.message)
                await asyncio.sleep(min(2.0**failures, 30.0))
                continue
            except AgentMethodError as exc:
                if exc.rpc_code == ErrorCode.UNKNOWN_TARGET:
                    reason = (
                        "the agent no longer knows this command (its state was lost or the result expired)"
                    )
                    await self._finish(job.command_id, LOST, reason)
                else:
                    await self._finish(
                        job.command_id, FAILED, f"the agent refused to return output: {exc.message}"
                    )
                return
            except AgentHttpError as exc:
                await self._finish(job.command_id, LOST, f"the agent refused us: {exc.message}")
                return
            failures = 0
            if reply.get("offset", offset) != offset:
                raise ValueError(f"agent answered for offset {reply.get('offset')} instead of {offset}")
            if marked is not None and not await marked:
                return  # cancelled while it was being dispatched: the cancellation stands
            marked = None
            offset = await self._store(job.command_id, offset, reply)
            if reply.get("is_final"):
                return

    async def _store(self, command_id: str, offset: int, reply: dict[str, Any]) -> int:
        rows, end = _rows(command_id, offset, reply.get("chunks") or [])
        self.metrics.output_bytes.inc(end - offset)
        new_offset = int(reply.get("new_offset", end))
        if new_offset != end:
            raise ValueError(f"agent reported new_offset {new_offset}, its chunks end at {end}")
        result = reply.get("result") if reply.get("is_final") else None
        values: dict[str, Any] = {"output_offset": new_offset}
        if result is not None:
            values.update(_final_values(result))

        async def op(session: AsyncSession) -> None:
            # Only the driver that read from the stored offset may append: never a byte twice.
            outcome = await session.execute(
                update(Command)
                .where(Command.id == command_id, Command.output_offset == offset)
                .values(**values)
            )
            if not outcome.rowcount:  # type: ignore[attr-defined]
                raise StateConflict(f"command {command_id} output moved past {offset} (a second driver?)")
            session.add_all(rows)

        await self.writer.submit(op)
        self._wake(command_id, values.get("status"))
        return new_offset

    async def _finish(self, command_id: str, status: str, reason: str) -> None:
        now = utcnow()

        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Command)
                .where(Command.id == command_id, Command.status.in_([PENDING, RUNNING]))
                .values(status=status, status_reason=reason, finished_at=now)
            )

        await self.writer.submit(op)
        log.info("command ended id=%s status=%s reason=%s", command_id, status, reason)
        self._wake(command_id, status)

    async def _agent_offline(self, host_id: int) -> bool:
        async with self.sessions() as session:
            status = (
                await session.execute(select(Agent.status).where(Agent.host_id == host_id))
            ).scalar_one_or_none()
        return status in (None, AGENT_OFFLINE)

    async def agent_went_offline(self, host_id: int) -> None:
        """Heartbeats gave up on this agent: its unfinished commands are lost, with the reason."""
        async with self.sessions() as session:
            ids = list(
                (
                    await session.execute(
                        select(Command.id).where(
                            Command.host_id == host_id, Command.status.in_([PENDING, RUNNING])
                        )
                    )
                ).scalars()
            )
        for command_id in ids:
            task = self._drivers.get(command_id)
            if task is not None:
                task.cancel()
            await self._finish(command_id, LOST, OFFLINE_REASON)

    def _wake(self, command_id: str, status: str | None) -> None:
        self.events.wake(f"command:{command_id}")
        if status is not None:
            self.events.publish({"type": "command", "id": command_id, "status": status})

    def _publish(self, command: Command) -> None:
        self.events.publish(
            {"type": "command", "id": command.id, "status": command.status, "host": command.host_name}
        )

    # reading

    async def get(self, session: AsyncSession, command_id: str) -> Command:
        command = await session.get(Command, command_id, populate_existing=True)
        if command is None:
            raise NotFound(f"no command {command_id!r}")
        return command

    async def list_commands(
        self,
        session: AsyncSession,
        host_id: int | None = None,
        status: str | None = None,
        batch_id: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Command], int]:
        query = select(Command)
        if host_id is not None:
            query = query.where(Command.host_id == host_id)
        if status:
            query = query.where(Command.status == status)
        if batch_id:
            query = query.where(Command.batch_id == batch_id)
        if since is not None:
            query = query.where(Command.created_at >= since)
        total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
        rows = await session.execute(
            query.order_by(Command.created_at.desc(), Command.id).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total)

    async def read_output(
        self, session: AsyncSession, command_id: str, offset: int = 0, limit: int = FETCH_BYTES
    ) -> OutputPage:
        command = await self.get(session, command_id)
        if offset > command.output_offset:
            raise InvalidInput(f"offset {offset} is past the stored output ({command.output_offset} bytes)")
        first = (
            await session.execute(
                select(func.max(OutputChunk.offset)).where(
                    OutputChunk.command_id == command_id, OutputChunk.offset <= offset
                )
            )
        ).scalar_one_or_none()
        query = (
            select(OutputChunk)
            .where(OutputChunk.command_id == command_id, OutputChunk.offset >= (first or 0))
            .order_by(OutputChunk.offset)
        )
        chunks: list[WireChunk] = []
        size = 0
        for row in (await session.execute(query.limit(64))).scalars():
            start = max(offset - row.offset, 0)
            data = row.data[start : start + (limit - size)]
            if data:
                chunks.append(WireChunk(command_id, row.offset + start, row.stream, data))
                size += len(data)
            if size >= limit:
                break
        next_offset = chunks[-1].end if chunks else offset
        complete = command.status in FINAL_STATES and next_offset >= command.output_offset
        return OutputPage(command_id, offset, chunks, next_offset, command.status, complete)

    async def follow(
        self, command_id: str, offset: int = 0, idle: float = 15.0
    ) -> AsyncIterator[OutputPage | None]:
        """Pages of output as they are stored, until complete; None after *idle* seconds of silence."""
        while True:
            with self.events.watch(f"command:{command_id}") as woken:
                async with self.sessions() as session:
                    page = await self.read_output(session, command_id, offset)
                if not page.chunks and not page.complete:
                    await sleep_until(woken, idle)
                    if not woken.done():
                        yield None  # keep-alive for the transport
                    continue
            yield page
            offset = page.next_offset
            if page.complete:
                return

    async def wait_final(self, command_id: str, timeout: float) -> Command:
        async def load() -> Command:
            async with self.sessions() as session:
                return await self.get(session, command_id)

        return await self.events.wait_until(
            f"command:{command_id}", load, lambda c: c.status in FINAL_STATES, timeout
        )

    # cancelling

    async def cancel(self, session: AsyncSession, command_id: str, channel: AgentChannel | None) -> Command:
        command = await self.get(session, command_id)
        if command.status in FINAL_STATES:
            raise StateConflict(f"command {command_id} already ended ({command.status})")
        if command.status == PENDING:
            task = self._drivers.get(command_id)
            if task is not None:
                task.cancel()
            await self._finish(command_id, CANCELLED, "cancelled before it was dispatched")
        elif channel is not None:
            # The agent terminates the process tree; the driver stores the final 'cancelled' result.
            await channel.call("cancel_command", {"command_id": command_id})
        return command


def _rows(command_id: str, offset: int, chunks: list[dict[str, Any]]) -> tuple[list[OutputChunk], int]:
    rows = []
    for chunk in chunks:
        data = chunk_bytes(chunk)
        stream = str(chunk.get("stream", "stdout"))
        for start in range(0, len(data), ROW_BYTES):
            piece = data[start : start + ROW_BYTES]
            rows.append(OutputChunk(command_id=command_id, offset=offset + start, stream=stream, data=piece))
        offset += len(data)
    return rows, offset


def _final_values(result: dict[str, Any]) -> dict[str, Any]:
    status = result.get("status")
    return {
        "status": status if status in _WIRE_STATES else FAILED,
        "status_reason": result.get("error"),
        "exit_code": result.get("return_code"),
        "signal": result.get("signal"),
        "output_truncated": bool(result.get("truncated")),
        "finished_at": utcnow(),
    }
