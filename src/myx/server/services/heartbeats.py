"""Heartbeats exactly per seed 001 §3.2.

Every cycle checks all listen-mode agents in random order with bounded concurrency: ``heartbeat``
(retried 3 times, 1/2/4 s) then ``get_status`` for the metrics snapshot.  A 401/400 marks the
agent offline at once; all retries failing marks it offline; the next cycle tries again.  Then
the scheduler sleeps a random 20-60 s.  Status changes are stored as AgentEvents, and an agent
that keeps failing is flagged as needing reinstall.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from myx.server.channels.base import AgentChannel, AgentHttpError, AgentMethodError
from myx.server.db.base import utcnow
from myx.server.db.models import AGENT_OFFLINE, AGENT_ONLINE, Agent, AgentEvent, Host
from myx.server.errors import AgentUnavailable
from myx.server.metrics import Metrics
from myx.server.services.commands import CommandService
from myx.server.services.events import EventBus
from myx.server.services.hosts import HostService
from myx.server.services.store import WriteQueue

log = logging.getLogger(__name__)


class HeartbeatScheduler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: WriteQueue,
        events: EventBus,
        hosts: HostService,
        commands: CommandService,
        channel_for: Any,
        metrics: Metrics,
        min_interval: float,
        max_interval: float,
        concurrency: int,
        reinstall_after: int,
        on_needs_reinstall: Callable[[int, str], Awaitable[object]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.writer = writer
        self.events = events
        self.hosts = hosts
        self.commands = commands
        self.channel_for = channel_for
        self.metrics = metrics
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.reinstall_after = reinstall_after
        self.on_needs_reinstall = on_needs_reinstall
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="myx-heartbeats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.cycle()
            except Exception:
                log.exception("heartbeat cycle failed")
            await asyncio.sleep(random.uniform(self.min_interval, self.max_interval))  # noqa: S311 - jitter

    async def cycle(self) -> None:
        async with self.sessions() as session:
            hosts = list(
                (await session.execute(select(Host).join(Agent).where(Agent.mode == "listen")))
                .unique()
                .scalars()
            )
        random.shuffle(hosts)  # seed 001: random order, so checks do not hit agents in lockstep
        await asyncio.gather(*(self._bounded(host) for host in hosts))

    async def _bounded(self, host: Host) -> None:
        async with self._slots:
            await self.check(host)

    async def check(self, host: Host) -> bool:
        """One heartbeat + status read; stores the outcome. True when the agent answered."""
        channel: AgentChannel = self.channel_for(self.hosts.endpoint(host))
        started = time.perf_counter()
        try:
            beat = await channel.call("heartbeat", {"server_time": utcnow().isoformat()})
            status = await channel.call("get_status", retry=False)
        except AgentHttpError as exc:
            await self._failed(host, f"refused: {exc.message}")
            return False
        except (AgentUnavailable, AgentMethodError) as exc:
            await self._failed(host, exc.message)
            return False
        self.metrics.heartbeat_seconds.observe(time.perf_counter() - started)
        await self._succeeded(host, beat, status)
        return True

    async def _succeeded(self, host: Host, beat: dict[str, Any], status: dict[str, Any]) -> None:
        now = utcnow()

        async def op(session: AsyncSession) -> str:
            agent = (await session.execute(select(Agent).where(Agent.host_id == host.id))).scalar_one()
            old = agent.status
            agent.status = AGENT_ONLINE
            agent.version = str(beat.get("version") or status.get("version") or "") or None
            agent.last_heartbeat = agent.rpc_last_check = agent.rpc_last_success = now
            agent.last_error = None
            agent.consecutive_failures = 0
            agent.needs_reinstall = False
            agent.rpc_supported = True
            agent.metrics = status
            agent.metrics_at = now
            if old != AGENT_ONLINE:
                session.add(
                    AgentEvent(
                        host_id=host.id, old_status=old, new_status=AGENT_ONLINE, reason="heartbeat answered"
                    )
                )
            return old

        old = await self.writer.submit(op)
        if old != AGENT_ONLINE:
            log.info("agent online host=%s", host.name)
            self.events.publish({"type": "host", "id": host.id, "name": host.name, "status": AGENT_ONLINE})
            if old == AGENT_OFFLINE:
                await self.commands.resume_host(host.id)

    async def _failed(self, host: Host, reason: str) -> None:
        now = utcnow()
        self.metrics.heartbeat_failures.inc()

        async def op(session: AsyncSession) -> tuple[str, bool]:
            agent = (await session.execute(select(Agent).where(Agent.host_id == host.id))).scalar_one()
            old = agent.status
            agent.status = AGENT_OFFLINE
            agent.rpc_last_check = now
            agent.last_error = reason
            agent.consecutive_failures += 1
            if agent.consecutive_failures >= self.reinstall_after:
                agent.needs_reinstall = True
            if old != AGENT_OFFLINE:
                session.add(
                    AgentEvent(host_id=host.id, old_status=old, new_status=AGENT_OFFLINE, reason=reason)
                )
            return old, agent.needs_reinstall

        old, needs_reinstall = await self.writer.submit(op)
        if old != AGENT_OFFLINE:
            log.warning("agent offline host=%s reason=%s", host.name, reason)
            self.events.publish(
                {"type": "host", "id": host.id, "name": host.name, "status": AGENT_OFFLINE, "reason": reason}
            )
            await self.commands.agent_went_offline(host.id)
        if needs_reinstall and self.on_needs_reinstall is not None:
            try:
                await self.on_needs_reinstall(host.id, reason)
            except Exception:
                # A reinstall that cannot even start must not stop the heartbeats of other hosts.
                log.exception("automatic reinstall failed to start host=%s", host.name)
