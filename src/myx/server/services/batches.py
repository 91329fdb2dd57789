"""Batches (群控): one command over many hosts in rolling waves, stopping when failures pile up.

Every host's command is recorded up front (pending) so the batch is visible whole from the
start; a wave of ``batch_size`` hosts runs with at most ``max_concurrency`` at a time; after each
wave, more than ``max_failures`` failed hosts stops the batch and the hosts not yet started are
cancelled with the reason.  A control-server restart resumes where the batch was.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from myx.server.db.base import utcnow
from myx.server.db.models import CANCELLED, FINAL_STATES, PENDING, RUNNING, SUCCESS, Batch, Command, Host
from myx.server.errors import InvalidInput, NotFound, StateConflict
from myx.server.services.commands import CommandRequest, CommandService
from myx.server.services.events import EventBus
from myx.server.services.hosts import HostService
from myx.server.services.store import WriteQueue

log = logging.getLogger(__name__)

BATCH_DONE, BATCH_FAILED, BATCH_STOPPED = "success", "failed", "stopped"


@dataclass
class BatchRequest:
    targets: list[str]
    request: CommandRequest
    max_concurrency: int = 50
    batch_size: int | None = None
    max_failures: int | None = None


@dataclass
class BatchSummary:
    batch: Batch
    counts: dict[str, int]
    commands: list[Command] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BatchService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: WriteQueue,
        events: EventBus,
        hosts: HostService,
        commands: CommandService,
        max_concurrency: int,
    ) -> None:
        self.sessions = sessions
        self.writer = writer
        self.events = events
        self.hosts = hosts
        self.commands = commands
        self.max_concurrency = max_concurrency
        self._runners: dict[str, asyncio.Task[None]] = {}

    async def create(self, session: AsyncSession, spec: BatchRequest, user_id: int | None) -> Batch:
        if not spec.targets:
            raise InvalidInput("a batch needs at least one target (host id, name, label=value or all)")
        if not 1 <= spec.max_concurrency <= self.max_concurrency:
            raise InvalidInput(f"max_concurrency must be between 1 and {self.max_concurrency}")
        if spec.batch_size is not None and spec.batch_size < 1:
            raise InvalidInput("batch_size must be at least 1")
        if spec.max_failures is not None and spec.max_failures < 0:
            raise InvalidInput("max_failures must not be negative")
        hosts = await self.hosts.resolve_targets(session, spec.targets)
        batch = Batch(
            id=uuid.uuid4().hex,
            target=spec.targets,
            kind=spec.request.kind,
            command=spec.request.command,
            args=spec.request.args,
            timeout=spec.request.timeout,
            max_concurrency=spec.max_concurrency,
            batch_size=spec.batch_size or len(hosts),
            max_failures=spec.max_failures,
            status=RUNNING,
            created_by=user_id,
            created_at=utcnow(),
        )

        async def insert(s: AsyncSession) -> None:
            s.add(batch)

        await self.writer.submit(insert)
        await self.commands.create_many(hosts, spec.request, user_id, batch_id=batch.id)
        self._start(batch.id)
        return batch

    def _start(self, batch_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch_id), name=f"myx-batch-{batch_id}")
        self._runners[batch_id] = task
        task.add_done_callback(lambda _: self._runners.pop(batch_id, None))

    async def resume_all(self) -> None:
        async with self.sessions() as session:
            ids = list((await session.execute(select(Batch.id).where(Batch.status == RUNNING))).scalars())
        for batch_id in ids:
            self._start(batch_id)

    async def stop(self) -> None:
        tasks = list(self._runners.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, batch_id: str) -> None:
        try:
            await self._run_waves(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("batch runner failed id=%s", batch_id)
            await self._close(batch_id, BATCH_FAILED, f"internal error: {exc}")

    async def _run_waves(self, batch_id: str) -> None:
        async with self.sessions() as session:
            batch = await self._get(session, batch_id)
            rows = (
                await session.execute(
                    select(Command, Host)
                    .join(Host, Command.host_id == Host.id)
                    .where(Command.batch_id == batch_id)
                    .order_by(Command.host_name)
                )
            ).all()
        slots = asyncio.Semaphore(batch.max_concurrency)
        failures = sum(1 for c, _ in rows if c.status in FINAL_STATES and c.status != SUCCESS)
        todo = [(c, h) for c, h in rows if c.status not in FINAL_STATES]
        for start in range(0, len(todo), batch.batch_size):
            wave = todo[start : start + batch.batch_size]
            outcomes = await asyncio.gather(*(self._one(c, h, slots) for c, h in wave))
            failures += sum(1 for status in outcomes if status != SUCCESS)
            if batch.max_failures is not None and failures > batch.max_failures:
                reason = f"stopped: {failures} hosts failed, more than the allowed {batch.max_failures}"
                await self._cancel_pending(batch_id, f"batch {reason}")
                await self._close(batch_id, BATCH_STOPPED, reason)
                return
        await self._close(
            batch_id,
            BATCH_DONE if failures == 0 else BATCH_FAILED,
            f"{failures} hosts failed" if failures else None,
        )

    async def _one(self, command: Command, host: Host, slots: asyncio.Semaphore) -> str:
        async with slots:
            if command.status == PENDING and not self.commands.is_driving(command.id):
                self.commands.start_pending(command, host)
            final = await self.commands.wait_final(command.id, timeout=command.timeout + 3600)
            return final.status

    async def _cancel_pending(self, batch_id: str, reason: str) -> None:
        now = utcnow()

        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Command)
                .where(Command.batch_id == batch_id, Command.status == PENDING)
                .values(status=CANCELLED, status_reason=reason, finished_at=now)
            )

        await self.writer.submit(op)

    async def _close(self, batch_id: str, status: str, reason: str | None) -> None:
        now = utcnow()

        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.status == RUNNING)
                .values(status=status, status_reason=reason, finished_at=now)
            )

        await self.writer.submit(op)
        self.events.publish({"type": "batch", "id": batch_id, "status": status})
        self.events.wake(f"batch:{batch_id}")
        log.info("batch ended id=%s status=%s reason=%s", batch_id, status, reason)

    async def cancel(self, session: AsyncSession, batch_id: str) -> Batch:
        batch = await self._get(session, batch_id)
        if batch.status != RUNNING:
            raise StateConflict(f"batch {batch_id} already ended ({batch.status})")
        task = self._runners.get(batch_id)
        if task is not None:
            task.cancel()
        await self._cancel_pending(batch_id, "batch cancelled")
        await self._close(batch_id, CANCELLED, "cancelled")
        return batch

    async def _get(self, session: AsyncSession, batch_id: str) -> Batch:
        batch = await session.get(Batch, batch_id, populate_existing=True)
        if batch is None:
            raise NotFound(f"no batch {batch_id!r}")
        return batch

    async def summary(self, session: AsyncSession, batch_id: str, with_commands: bool = True) -> BatchSummary:
        batch = await self._get(session, batch_id)
        counts_rows = await session.execute(
            select(Command.status, func.count()).where(Command.batch_id == batch_id).group_by(Command.status)
        )
        counts = {status: int(n) for status, n in counts_rows.all()}
        commands: list[Command] = []
        if with_commands:
            query = select(Command).where(Command.batch_id == batch_id).order_by(Command.host_name)
            commands = list((await session.execute(query)).scalars())
        return BatchSummary(batch, counts, commands)

    async def list_batches(
        self, session: AsyncSession, limit: int = 50, offset: int = 0
    ) -> tuple[list[Batch], int]:
        total = (await session.execute(select(func.count()).select_from(Batch))).scalar_one()
        rows = await session.execute(
            select(Batch).order_by(Batch.created_at.desc()).limit(limit).offset(offset)
        )
        return list(rows.scalars()), int(total)

    async def wait_final(self, batch_id: str, timeout: float) -> Batch:
        async def load() -> Batch:
            async with self.sessions() as session:
                return await self._get(session, batch_id)

        return await self.events.wait_until(f"batch:{batch_id}", load, lambda b: b.status != RUNNING, timeout)
