"""Agent certificates: rotation through ``update_certificate`` and renewal ahead of expiry.

The fleet CA issues a fresh pair, the agent validates and hot-reloads it (commands in flight are
not touched), and we record the new fingerprint and expiry only once the agent confirmed the
fingerprint it now serves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from myx.server.channels.base import AgentChannel, AgentEndpoint
from myx.server.db.base import utcnow
from myx.server.db.models import AGENT_ONLINE, Agent, Host
from myx.server.errors import AgentRejected, AgentUnavailable, StateConflict
from myx.server.security.ca import FleetCA
from myx.server.services.hosts import HostService

log = logging.getLogger(__name__)


class CertificateService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        ca: FleetCA,
        hosts: HostService,
        channel_for: Callable[[AgentEndpoint], AgentChannel],
        renew_before_days: int,
        check_every: float,
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.hosts = hosts
        self.channel_for = channel_for
        self.renew_before = timedelta(days=renew_before_days)
        self.check_every = check_every
        self._task: asyncio.Task[None] | None = None

    async def rotate(self, session: AsyncSession, host: Host) -> Host:
        """Issue a new certificate for *host* and have its agent switch to it."""
        if host.agent.custom_cert:
            raise StateConflict(f"host {host.name!r} uses a custom certificate: replace it there, not here")
        issued = self.ca.issue_agent_certificate(host.name, [host.address])
        channel = self.channel_for(self.hosts.endpoint(host))
        reply = await channel.call(
            "update_certificate", {"cert": issued.cert_pem.decode(), "key": issued.key_pem.decode()}
        )
        if reply.get("fingerprint") != issued.fingerprint:
            raise AgentRejected(
                f"{host.name}: the agent reports fingerprint {reply.get('fingerprint')!r} after the update"
            )
        host.agent.cert_fingerprint = issued.fingerprint
        host.agent.cert_not_after = issued.not_after
        await session.commit()
        log.info("rotated agent certificate host=%s not_after=%s", host.name, issued.not_after.isoformat())
        return host

    async def renew_expiring(self) -> int:
        """Rotate every online agent whose certificate expires within the renewal window."""
        cutoff = utcnow() + self.renew_before
        async with self.sessions() as session:
            query = (
                select(Host)
                .join(Agent)
                .where(
                    Agent.status == AGENT_ONLINE, Agent.custom_cert.is_(False), Agent.cert_not_after < cutoff
                )
            )
            hosts = list((await session.execute(query)).unique().scalars())
            renewed = 0
            for host in hosts:
                try:
                    await self.rotate(session, host)
                    renewed += 1
                except (AgentUnavailable, AgentRejected) as exc:
                    log.warning("certificate renewal failed host=%s error=%s", host.name, exc.message)
        return renewed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="myx-cert-renewal")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.renew_expiring()
            except Exception:
                log.exception("certificate renewal cycle failed")
            await asyncio.sleep(self.check_every)
