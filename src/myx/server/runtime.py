"""Everything one control-server process holds: storage, CA, channels, services, background tasks.

Built from :class:`Settings` by ``create_app()`` (never at import time) and started/stopped by
the app's lifespan.  Services get their collaborators here and nowhere else.
"""

from __future__ import annotations

import hashlib
import logging
import os

import httpx

from myx.deployment_tool import TOOL_DIR
from myx.server.channels.base import AgentEndpoint
from myx.server.channels.http import HttpAgentChannel, make_client
from myx.server.channels.retry import RetryPolicy
from myx.server.db import migrate
from myx.server.db.base import make_engine, make_sessionmaker
from myx.server.errors import ConfigurationError
from myx.server.metrics import Metrics
from myx.server.security.ca import FleetCA
from myx.server.security.crypto import SecretBox
from myx.server.services.ansible import AnsibleExecutor
from myx.server.services.batches import BatchService
from myx.server.services.certificates import CertificateService
from myx.server.services.commands import CommandService
from myx.server.services.deployments import DeploymentService
from myx.server.services.events import EventBus
from myx.server.services.heartbeats import HeartbeatScheduler
from myx.server.services.hosts import HostService
from myx.server.services.store import WriteQueue
from myx.server.services.users import UserService
from myx.server.settings import Settings

log = logging.getLogger(__name__)


def ensure_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        ensure_data_dir(settings)
        self.box = SecretBox(settings.effective_secret())
        self.ca = FleetCA.load_or_create(settings.ca_dir)
        self.engine = make_engine(settings.db_url)
        self.sessions = make_sessionmaker(self.engine)
        self.events = EventBus()
        self.metrics = Metrics()
        self.writer = WriteQueue(self.sessions)
        self.policy = RetryPolicy(settings.agent_rpc_retry_max_attempts, settings.agent_rpc_retry_base_delay)
        self.client = make_client(self.ca.agent_ssl_context())
        self._pinned_clients: dict[str, httpx.AsyncClient] = {}
        self.hosts = HostService(self.box, self.ca)
        self.users = UserService()
        self.commands = CommandService(
            self.sessions,
            self.writer,
            self.events,
            self.box,
            channel_for=self.channel_for,
            endpoint_for=self.hosts.endpoint,
            log_poll_wait=settings.log_poll_wait,
            rpc_timeout=settings.agent_rpc_timeout,
            metrics=self.metrics,
        )
        self.batches = BatchService(
            self.sessions, self.writer, self.events, self.hosts, self.commands, settings.max_batch_concurrency
        )
        self.deployments = DeploymentService(
            self.sessions,
            self.writer,
            self.events,
            self.box,
            self.hosts,
            self.channel_for,
            data_dir=settings.data_dir,
            agent_pyz=settings.agent_pyz,
            wait_timeout=settings.agent_install_timeout,
            concurrency=settings.install_concurrency,
            auto_reinstall_cooldown=settings.auto_reinstall_cooldown if settings.auto_reinstall else None,
        )
        self.ansible = AnsibleExecutor(self.hosts, self.commands, self.channel_for, TOOL_DIR)
        self.certificates = CertificateService(
            self.sessions,
            self.ca,
            self.hosts,
            self.channel_for,
            renew_before_days=settings.cert_renew_before_days,
            check_every=settings.cert_check_interval,
        )
        self.heartbeats = HeartbeatScheduler(
            self.sessions,
            self.writer,
            self.events,
            self.hosts,
            self.commands,
            self.channel_for,
            self.metrics,
            min_interval=settings.agent_heartbeat_min_interval,
            max_interval=settings.agent_heartbeat_max_interval,
            concurrency=settings.heartbeat_concurrency,
            reinstall_after=settings.reinstall_after_failed_cycles,
            on_needs_reinstall=self.deployments.reinstall_if_due,
        )

    def channel_for(self, endpoint: AgentEndpoint) -> HttpAgentChannel:
        client = self.client
        if endpoint.pinned_cert_pem is not None:
            # A custom certificate: a client that trusts exactly that certificate, one per pin.
            pin = hashlib.sha256(endpoint.pinned_cert_pem).hexdigest()
            client = self._pinned_clients.get(pin) or self._pinned_clients.setdefault(
                pin, make_client(self.ca.pinned_ssl_context(endpoint.pinned_cert_pem), max_connections=64)
            )
        return HttpAgentChannel(endpoint, client, self.policy, self.settings.agent_rpc_timeout)

    async def start(self, background: bool = True) -> None:
        url = self.settings.db_url
        if self.settings.auto_migrate:
            await migrate.upgrade(url)
        elif not await migrate.check_up_to_date(url):
            raise ConfigurationError("the database schema is not up to date: run 'myx db upgrade' first")
        self.writer.start()
        if background:
            await self.commands.resume_all()
            interrupted = await self.deployments.fail_interrupted()
            if interrupted:
                log.warning(
                    "%d deployment(s) were cut short by the last stop and are marked failed", interrupted
                )
            await self.batches.resume_all()
            self.heartbeats.start()
            self.certificates.start()

    async def stop(self) -> None:
        await self.heartbeats.stop()
        await self.certificates.stop()
        await self.deployments.stop()
        await self.batches.stop()
        await self.commands.stop()
        await self.writer.stop()
        await self.client.aclose()
        for client in self._pinned_clients.values():
            await client.aclose()
        await self.engine.dispose()
