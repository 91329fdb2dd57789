"""Deployments: agent installs and uninstalls over SSH with Ansible (seed 001 §3.1, seed 003).

The flow of seed 001 §3.1: the host already has its identity (token, secret, rpc_port, rpc_path);
``install_agent.yml`` checks Python and that the port is free (a taken port makes us pick another
and run again), uploads the zipapp, config (0600) and certificates, installs the service (systemd,
or the agent's own supervisor) and starts it; then we wait for the agent's RPC every 3 s, logging
progress every 10 s, reinstall once if it does not come up, and fail with the agent's log tail.
Everything goes to the Deployment's one log, which readers follow while it grows.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from myx.server.channels.base import AgentChannel
from myx.server.db.base import utcnow
from myx.server.db.models import (
    AGENT_ONLINE,
    FAILED,
    PENDING,
    RUNNING,
    SUCCESS,
    Agent,
    AgentEvent,
    Deployment,
    Host,
)
from myx.server.errors import AgentRejected, AgentUnavailable, InvalidInput, NotFound, StateConflict
from myx.server.security.crypto import SecretBox
from myx.server.services.ansible import check_ssh_extra_vars, confine_playbook
from myx.server.services.events import EventBus
from myx.server.services.hosts import HostService
from myx.server.services.store import WriteQueue

log = logging.getLogger(__name__)

PORT_TAKEN_MARKER = "MYX_PORT_TAKEN"
# agent_log.yml prints each log line with this prefix so it can be told from Ansible's own output.
LOG_PREFIX = "MYX_LOG| "
STATUS_PREFIX = "MYX_STATUS| "
PORT_ATTEMPTS = 3
# How long the client certificate of an SSH upgrade's health check is valid, beyond its deadlines.
PROBE_VALIDITY = timedelta(minutes=30)
WAIT_EVERY = 3.0
PROGRESS_EVERY = 10.0
DEFAULT_OPTIONS = {
    "install_dir": "/opt/myx-agent",
    "config_dir": "/etc/myx-agent",
    "state_dir": "/var/lib/myx-agent",
    "service_manager": "auto",
    "bind_address": "0.0.0.0",  # noqa: S104 - the control server dials the agent from the network
}
OPTION_KEYS = frozenset(DEFAULT_OPTIONS)
UPGRADE_METHODS = ("agent", "ssh")
# upgrade_agent.yml starts its failure messages with these.
ROLLED_BACK_MARKER = "MYX_ROLLED_BACK:"
ROLLBACK_FAILED_MARKER = "MYX_ROLLBACK_FAILED:"
NOT_INSTALLED_MARKER = "MYX_NOT_INSTALLED:"


class DeploymentFailed(Exception):
    """Ends a deployment as failed with this message (kept apart from MyxError: never an HTTP error)."""


@dataclass(frozen=True)
class SshAccess:
    address: str
    port: int
    user: str
    password: str | None
    private_key: str | None


def tool_dir() -> Path:
    from myx.deployment_tool import TOOL_DIR

    return Path(TOOL_DIR)


class DeploymentService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        writer: WriteQueue,
        events: EventBus,
        box: SecretBox,
        hosts: HostService,
        channel_for: Callable[[Any], AgentChannel],
        data_dir: Path,
        agent_pyz: Path | None,
        wait_timeout: float,
        concurrency: int,
        auto_reinstall_cooldown: float | None = None,
    ) -> None:
        self.sessions = sessions
        self.writer = writer
        self.events = events
        self.box = box
        self.hosts = hosts
        self.channel_for = channel_for
        self.data_dir = data_dir
        self.agent_pyz = agent_pyz
        self.wait_timeout = wait_timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # None: no automatic reinstalls. Else the time.monotonic() of each host's last one.
        self.auto_reinstall_cooldown = auto_reinstall_cooldown
        self._auto_reinstalls: dict[int, float] = {}

    # credentials

    def set_ssh(
        self,
        host: Host,
        user: str,
        port: int = 22,
        password: str | None = None,
        private_key: str | None = None,
    ) -> None:
        if not user:
            raise InvalidInput("ssh user must not be empty")
        if not 1 <= port <= 65535:
            raise InvalidInput("ssh port must be between 1 and 65535")
        host.ssh_user = user
        host.ssh_port = port
        host.ssh_password_enc = (
            self.box.encrypt(password, aad=f"ssh-password:{host.name}") if password else None
        )
        host.ssh_key_enc = self.box.encrypt(private_key, aad=f"ssh-key:{host.name}") if private_key else None

    def ssh_access(self, host: Host) -> SshAccess:
        if not host.ssh_user or not (host.ssh_password_enc or host.ssh_key_enc):
            raise InvalidInput(
                f"host {host.name!r} has no SSH credentials: set a user and a password or key first"
            )
        password = (
            self.box.decrypt(host.ssh_password_enc, aad=f"ssh-password:{host.name}")
            if host.ssh_password_enc
            else None
        )
        key = self.box.decrypt(host.ssh_key_enc, aad=f"ssh-key:{host.name}") if host.ssh_key_enc else None
        return SshAccess(host.address, host.ssh_port, host.ssh_user, password, key)

    @staticmethod
    def options(host: Host, overrides: dict[str, str] | None = None) -> dict[str, str]:
        merged = {**DEFAULT_OPTIONS, **(host.install_options or {}), **(overrides or {})}
        unknown = set(merged) - OPTION_KEYS
        if unknown:
            raise InvalidInput(f"unknown install option(s): {', '.join(sorted(unknown))}")
        if merged["service_manager"] not in ("auto", "systemd", "supervisor"):
            raise InvalidInput("service_manager must be auto, systemd or supervisor")
        return merged

    # starting

    async def start(
        self,
        session: AsyncSession,
        host: Host,
        kind: str,
        user_id: int | None,
        note: str | None = None,
        **overrides: str,
    ) -> Deployment:
        """Record a deployment for *host* and run it in the background (*note*: its log's first line)."""
        if kind not in ("install", "reinstall", "uninstall"):
            raise InvalidInput(f"unknown deployment kind {kind!r}")
        self.ssh_access(host)  # fail now, not in the background, when credentials are missing
        options = self.options(host, overrides)
        await self._refuse_busy(session, [host])
        if kind != "uninstall":
            self._require_pyz()
        host.install_options = {k: v for k, v in options.items() if v != DEFAULT_OPTIONS[k]}
        deployment = await self._record(session, host, kind, user_id, note)
        self._spawn(deployment.id, self._run(deployment.id, host.id, kind, options))
        return deployment

    async def start_upgrade(
        self,
        session: AsyncSession,
        host: Host,
        user_id: int | None,
        health_deadline: float,
        force: bool,
        method: str = "agent",
    ) -> Deployment:
        """Upgrade one agent to the control server's zipapp.

        ``agent``: online, through the agent, which swaps its zipapp and rolls back by itself.
        ``ssh``: with upgrade_agent.yml, which keeps a backup and restores it in ``rescue``.
        """
        self._check_upgrade(method, [host])
        await self._refuse_busy(session, [host])
        deployment = await self._record(session, host, "upgrade", user_id)
        work = self._upgrade_work(method, deployment.id, host.id, health_deadline, force)
        self._spawn(deployment.id, self._guarded(deployment.id, work))
        return deployment

    def _pyz_ready(self) -> bool:
        return self.agent_pyz is not None and self.agent_pyz.is_file()

    def _require_pyz(self) -> None:
        if not self._pyz_ready():
            raise InvalidInput(
                "the agent zipapp is not available: build it with 'make pyz' and set MYX_AGENT_PYZ "
                "to its path"
            )

    def _check_upgrade(self, method: str, hosts: list[Host]) -> None:
        """Refuse at once what would only fail in the background."""
        if method not in UPGRADE_METHODS:
            raise InvalidInput(f"unknown upgrade method {method!r}: use {' or '.join(UPGRADE_METHODS)}")
        self._require_pyz()
        if method == "ssh":
            for host in hosts:
                self.ssh_access(host)

    def _upgrade_work(
        self, method: str, deployment_id: str, host_id: int, health_deadline: float, force: bool
    ) -> Coroutine[Any, Any, None]:
        if method == "ssh":
            return self._upgrade_ssh(deployment_id, host_id, health_deadline, force)
        return self._upgrade(deployment_id, host_id, health_deadline, force)

    async def service_action(self, host: Host, action: str) -> str:
        """start/stop/restart/status of the agent's service over SSH; returns running or stopped."""
        if action not in ("start", "stop", "restart", "status"):
            raise InvalidInput("action must be start, stop, restart or status")
        access = self.ssh_access(host)
        options = self.options(host)
        extravars = {
            "myx_action": action,
            "myx_install_dir": options["install_dir"],
            "myx_config_dir": options["config_dir"],
            "myx_service_manager": options["service_manager"],
        }
        if action == "stop":
            # Before the stop: the heartbeats that fail from then on must not bring it back.
            await self._set_stopped_by_operator(host.id, True)
        with self._workdir() as work:
            ok, output = await self._ansible(
                work,
                access,
                {"playbook": str(tool_dir() / "playbooks" / "agent_service.yml"), "extravars": extravars},
            )
        if not ok:
            if action == "stop":
                # It may well run on: a stop that failed is no reason to leave it unattended.
                await self._set_stopped_by_operator(host.id, False)
            raise AgentUnavailable(f"{host.name}: {action} over SSH failed: {_failure_summary(output)}")
        if action in ("start", "restart"):
            await self._set_stopped_by_operator(host.id, False)
        return "running" if f"{STATUS_PREFIX}running" in output else "stopped"

    async def reinstall_if_due(self, host_id: int, reason: str) -> Deployment | None:
        """Reinstall over SSH an agent the heartbeats gave up on (seed 001 §3.2/§3.3).

        Only where the host has SSH credentials and its agent was not stopped on purpose; never
        while another deployment of the host runs; at most once per cooldown per host.
        """
        if self.auto_reinstall_cooldown is None or not self._pyz_ready():
            return None
        last = self._auto_reinstalls.get(host_id)
        if last is not None and time.monotonic() - last < self.auto_reinstall_cooldown:
            return None
        async with self.sessions() as session:
            host = await session.get(Host, host_id, populate_existing=True)
            if host is None or host.agent.stopped_by_operator or not _has_ssh_access(host):
                return None
            if await self._deploying(session, host_id):
                return None
            self._auto_reinstalls[host_id] = time.monotonic()
            log.warning("reinstalling the agent automatically host=%s reason=%s", host.name, reason)
            return await self.start(
                session,
                host,
                "reinstall",
                None,
                note=f"automatic reinstall: the agent stopped answering its heartbeats ({reason})",
            )

    async def _refuse_busy(self, session: AsyncSession, hosts: list[Host]) -> None:
        """One deployment per host at a time: two playbooks on one host would trip over each other."""
        for host in hosts:
            if await self._deploying(session, host.id):
                raise StateConflict(
                    f"host {host.name!r} has a deployment running: wait for it (GET /api/hosts/{host.name}"
                    "/deployments)"
                )

    async def fail_interrupted(self) -> int:
        """At start-up: deployments the previous run left running or pending end as failed.

        Their Ansible runs died with that process; left as they are, they would block the host's next
        deployment for good. Returns how many there were.
        """

        async def op(session: AsyncSession) -> int:
            result = await session.execute(
                update(Deployment)
                .where(Deployment.status.in_((RUNNING, PENDING)))
                .values(
                    status=FAILED,
                    error="the control server stopped during the deployment",
                    finished_at=utcnow(),
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

        return int(await self.writer.submit(op))

    @staticmethod
    async def _deploying(session: AsyncSession, host_id: int) -> bool:
        found = await session.execute(
            select(Deployment.id)
            .where(Deployment.host_id == host_id, Deployment.status.in_((RUNNING, PENDING)))
            .limit(1)
        )
        return found.first() is not None

    async def _set_stopped_by_operator(self, host_id: int, stopped: bool) -> None:
        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Agent).where(Agent.host_id == host_id).values(stopped_by_operator=stopped)
            )

        await self.writer.submit(op)

    async def start_rollout(
        self,
        session: AsyncSession,
        hosts: list[Host],
        user_id: int | None,
        canary: int,
        batch_size: int,
        health_deadline: float,
        force: bool,
        method: str = "agent",
    ) -> list[Deployment]:
        """Upgrade many agents: *canary* hosts one by one first, then waves of *batch_size* at a time.

        The first failure stops the rollout; hosts not yet started end as failed with that reason.
        """
        if not hosts:
            raise InvalidInput("no hosts to upgrade")
        self._check_upgrade(method, hosts)
        await self._refuse_busy(session, hosts)
        if canary < 0 or batch_size < 1:
            raise InvalidInput("canary must be >= 0 and batch_size >= 1")
        deployments = [_new_deployment(h.id, "upgrade", user_id, PENDING) for h in hosts]
        session.add_all(deployments)
        await session.commit()
        plan = [[d] for d in deployments[:canary]]
        rest = deployments[canary:]
        plan += [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
        self._spawn(f"rollout-{deployments[0].id}", self._rollout(plan, health_deadline, force, method))
        return deployments

    async def start_playbook(
        self,
        session: AsyncSession,
        host: Host,
        playbook: str,
        extra_vars: dict[str, Any] | None,
        timeout: float,
        user_id: int | None,
    ) -> Deployment:
        """AnsibleExecutor's SSH method: a playbook of the deployment tool, run from here over SSH.

        The agent method runs it on the host, where it can do what a command can do anyway; this
        one runs Ansible on the control server, so the variables are held to plain data.
        """
        path = confine_playbook(tool_dir(), playbook)
        check_ssh_extra_vars(extra_vars or {})
        self.ssh_access(host)
        await self._refuse_busy(session, [host])
        deployment = await self._record(session, host, "playbook", user_id, f"running {playbook} over SSH")
        work = self._playbook_ssh(deployment.id, host.id, path, extra_vars or {}, timeout)
        self._spawn(deployment.id, self._guarded(deployment.id, work))
        return deployment

    async def _playbook_ssh(
        self, deployment_id: str, host_id: int, path: Path, extra_vars: dict[str, Any], timeout: float
    ) -> None:
        async with self._slots:
            _host, access = await self._load(host_id)
            with self._workdir() as work:
                ok, output = await self._playbook(
                    deployment_id, work, access, str(path), extra_vars, timeout=timeout
                )
        if not ok:
            raise DeploymentFailed(_failure_summary(output))

    @staticmethod
    async def _record(
        session: AsyncSession, host: Host, kind: str, user_id: int | None, note: str | None = None
    ) -> Deployment:
        """A running deployment of *host*, stored before its work starts."""
        deployment = _new_deployment(host.id, kind, user_id, RUNNING, note)
        session.add(deployment)
        await session.commit()
        return deployment

    def _spawn(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        """Run *work* in the background; stop() cancels what is still running."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _rollout(
        self, plan: list[list[Deployment]], health_deadline: float, force: bool, method: str
    ) -> None:
        for number, wave in enumerate(plan):
            for d in wave:
                await self._set_status(d.id, RUNNING)
            await asyncio.gather(
                *(
                    self._guarded(d.id, self._upgrade_work(method, d.id, d.host_id, health_deadline, force))
                    for d in wave
                )
            )
            failed = await self._failed_among([d.id for d in wave])
            if failed:
                reason = f"rollout stopped: the upgrade failed on {len(failed)} host(s) of wave {number + 1}"
                for later in [d for w in plan[number + 1 :] for d in w]:
                    await self._end(later.id, FAILED, reason)
                return

    async def _set_status(self, deployment_id: str, status: str) -> None:
        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Deployment).where(Deployment.id == deployment_id).values(status=status)
            )

        await self.writer.submit(op)

    async def _failed_among(self, ids: list[str]) -> list[str]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(Deployment.id).where(Deployment.id.in_(ids), Deployment.status == FAILED)
            )
            return list(rows.scalars())

    async def _guarded(self, deployment_id: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except DeploymentFailed as exc:
            await self._end(deployment_id, FAILED, str(exc))
        except (AgentUnavailable, AgentRejected) as exc:
            await self._end(deployment_id, FAILED, exc.message)
        except asyncio.CancelledError:
            await asyncio.shield(
                self._end(deployment_id, FAILED, "the control server stopped during the deployment")
            )
            raise
        except Exception as exc:
            log.exception("deployment failed id=%s", deployment_id)
            await self._end(deployment_id, FAILED, f"internal error: {exc}")
        else:
            await self._end(deployment_id, SUCCESS, None)

    async def _upgrade(self, deployment_id: str, host_id: int, health_deadline: float, force: bool) -> None:
        assert self.agent_pyz is not None
        data = self.agent_pyz.read_bytes()
        target = _pyz_version(data)
        host, _ = await self._load_host(host_id)
        channel = self.channel_for(self.hosts.endpoint(host))
        before = (await channel.call("health_check"))["version"]
        await self._say(deployment_id, f"upgrading {host.name} from {before} to {target} ({len(data)} bytes)")
        await channel.call(
            "upgrade_agent",
            {
                "version": target,
                "sha256": hashlib.sha256(data).hexdigest(),
                "data": base64.b64encode(data).decode("ascii"),
                "health_deadline": health_deadline,
                "force": force,
            },
        )
        await self._say(
            deployment_id, f"the agent took the new version and restarts; deadline {health_deadline:g} s"
        )
        deadline = time.monotonic() + health_deadline + 60
        reported = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            try:
                status = await channel.call("get_status", retry=False, timeout=5)
            except (AgentUnavailable, AgentRejected):
                if time.monotonic() - reported >= PROGRESS_EVERY:
                    reported = time.monotonic()
                    await self._say(deployment_id, "waiting for the agent to come back")
                continue
            last = status.get("last_upgrade") or {}
            if status.get("version") == target and last.get("status") == "success":
                await self._say(deployment_id, f"the agent answers on {target}")
                return
            if last.get("status") == "rolled_back" and last.get("to_version") == target:
                raise DeploymentFailed(f"{last.get('reason')}; the agent answers on {status.get('version')}")
        raise DeploymentFailed(
            f"the agent did not report the upgrade's outcome within {health_deadline + 60:g} s"
        )

    async def _upgrade_ssh(
        self, deployment_id: str, host_id: int, health_deadline: float, force: bool
    ) -> None:
        """upgrade_agent.yml: backup, replace, restart, health check; the rescue restores the backup."""
        assert self.agent_pyz is not None
        target = _pyz_version(self.agent_pyz.read_bytes())
        async with self._slots:
            host, access = await self._load(host_id)
            if host.agent.version == target and not force:
                await self._say(
                    deployment_id, f"{host.name} already runs {target}: nothing to do (force redoes it)"
                )
                return
            options = self.options(host)
            await self._say(
                deployment_id,
                f"upgrading {host.name} to {target} over SSH ({access.user}@{access.address}:{access.port},"
                f" {options['install_dir']})",
            )
            extravars = {
                "myx_pyz_src": str(self.agent_pyz),
                **_layout_vars(options),
                "myx_health_timeout": max(1, math.ceil(health_deadline)),
            }
            with self._workdir() as work:
                extravars.update(self._probe_certificate(work, host.name, health_deadline))
                ok, output = await self._playbook(deployment_id, work, access, "upgrade_agent.yml", extravars)
        if not ok:
            raise DeploymentFailed(_upgrade_failure(output))
        await self._mark_online(host_id)
        await self._say(deployment_id, f"the agent answers on {target}")

    def _probe_certificate(self, work: Path, host_name: str, health_deadline: float) -> dict[str, str]:
        """A throwaway client certificate for upgrade_agent.yml's health check on the host.

        Valid for both health checks (the new version's, then the rollback's) plus the rest of the run.
        """
        validity = PROBE_VALIDITY + timedelta(seconds=2 * health_deadline)
        issued = self.hosts.ca.issue_client_certificate(f"MyX upgrade check {host_name}", validity)
        _write_private(work / "probe.crt", issued.cert_pem, 0o600)
        _write_private(work / "probe.key", issued.key_pem, 0o600)
        return {
            "myx_health_client_cert_src": str(work / "probe.crt"),
            "myx_health_client_key_src": str(work / "probe.key"),
        }

    async def _load_host(self, host_id: int) -> tuple[Host, None]:
        async with self.sessions() as session:
            host = await session.get(Host, host_id, populate_existing=True)
            if host is None:
                raise DeploymentFailed("the host was deleted during the deployment")
            return host, None

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, deployment_id: str, host_id: int, kind: str, options: dict[str, str]) -> None:
        work = self._uninstall if kind == "uninstall" else self._install
        async with self._slots:
            await self._guarded(deployment_id, work(deployment_id, host_id, options))

    # install

    async def _install(self, deployment_id: str, host_id: int, options: dict[str, str]) -> None:
        for reinstall in (False, True):
            await self._install_files(deployment_id, host_id, options, reinstall)
            if await self._wait_for_agent(deployment_id, host_id):
                await self._mark_online(host_id)
                await self._say(deployment_id, "agent is up and answering RPC")
                return
            if not reinstall:
                await self._say(deployment_id, "agent did not come up: reinstalling once (seed 001 §3.1)")
        tail = await self._agent_log_tail(deployment_id, host_id, options)
        raise DeploymentFailed(
            f"the agent did not answer within {self.wait_timeout:g} s after two installs; "
            f"its log ends with:\n{tail}"
        )

    async def _install_files(
        self, deployment_id: str, host_id: int, options: dict[str, str], reinstall: bool
    ) -> None:
        for _attempt in range(PORT_ATTEMPTS):
            host, access = await self._load(host_id)
            await self._say(
                deployment_id,
                f"{'re' if reinstall else ''}installing the agent on "
                f"{access.user}@{access.address}:{access.port}"
                f" (rpc_port {host.agent.rpc_port}, {options['install_dir']})",
            )
            with self._workdir() as work:
                bundle = work / "bundle"
                await self._write_bundle(host_id, bundle, options)
                extravars = {
                    "myx_pyz_src": str(self.agent_pyz),
                    "myx_bundle_src": str(bundle),
                    "myx_rpc_port": host.agent.rpc_port,
                    **_layout_vars(options),
                }
                ok, output = await self._playbook(deployment_id, work, access, "install_agent.yml", extravars)
            if ok:
                return
            if PORT_TAKEN_MARKER in output:
                port = await self._new_port(host_id)
                await self._say(
                    deployment_id, f"port {host.agent.rpc_port} is taken on the host: using {port}"
                )
                continue
            raise DeploymentFailed(_failure_summary(output))
        raise DeploymentFailed(f"no free rpc_port found after {PORT_ATTEMPTS} attempts")

    async def _uninstall(self, deployment_id: str, host_id: int, options: dict[str, str]) -> None:
        _host, access = await self._load(host_id)
        await self._say(
            deployment_id, f"uninstalling the agent from {access.user}@{access.address}:{access.port}"
        )
        extravars = {
            **_layout_vars(options),
            "myx_purge": True,
        }
        with self._workdir() as work:
            ok, output = await self._playbook(deployment_id, work, access, "uninstall_agent.yml", extravars)
        if not ok:
            raise DeploymentFailed(_failure_summary(output))

    async def _wait_for_agent(self, deployment_id: str, host_id: int) -> bool:
        """Seed 001 §3.1 step 10: try the RPC every 3 s, report every 10 s, give up at the timeout."""
        host, _ = await self._load(host_id)
        channel = self.channel_for(self.hosts.endpoint(host))
        started = time.monotonic()
        reported = started
        last_error = ""
        while time.monotonic() - started < self.wait_timeout:
            try:
                await channel.call("health_check", timeout=WAIT_EVERY, retry=False)
                return True
            except (AgentUnavailable, AgentRejected) as exc:
                last_error = exc.message
            if time.monotonic() - reported >= PROGRESS_EVERY:
                reported = time.monotonic()
                await self._say(
                    deployment_id, f"waiting for the agent ({reported - started:.0f} s): {last_error}"
                )
            await asyncio.sleep(WAIT_EVERY)
        await self._say(deployment_id, f"no answer after {self.wait_timeout:g} s: {last_error}")
        return False

    async def _agent_log_tail(self, deployment_id: str, host_id: int, options: dict[str, str]) -> str:
        _, access = await self._load(host_id)
        extravars = {
            "myx_install_dir": options["install_dir"],
            "myx_service_manager": options["service_manager"],
        }
        with self._workdir() as work:
            ok, output = await self._ansible(
                work,
                access,
                {"playbook": str(tool_dir() / "playbooks" / "agent_log.yml"), "extravars": extravars},
            )
        lines = [_log_line(line) for line in output.splitlines() if LOG_PREFIX in line]
        return "\n".join(lines)[-4000:] if ok and lines else "(the agent's log could not be read)"

    # ansible

    @staticmethod
    @contextlib.contextmanager
    def _workdir() -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(prefix="myx-deploy-"))
        try:
            yield path
        finally:
            # The private data dir holds the SSH password/key and the agent's secrets.
            shutil.rmtree(path, ignore_errors=True)

    async def _playbook(
        self,
        deployment_id: str,
        work: Path,
        access: SshAccess,
        playbook: str,
        extravars: dict[str, Any],
        timeout: float | None = None,
    ) -> tuple[bool, str]:
        """Run *playbook* (a name in the tool's playbooks folder, or an absolute path) into the log."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def on_line(text: str) -> None:
            loop.call_soon_threadsafe(lines.put_nowait, text)

        async def pump() -> None:
            while (text := await lines.get()) is not None:
                await self._append(deployment_id, text + "\n")

        what: dict[str, Any] = {"playbook": str(tool_dir() / "playbooks" / playbook), "extravars": extravars}
        if timeout is not None:
            what["timeout"] = max(1, math.ceil(timeout))  # ansible-runner kills the run after it
        pumper = asyncio.create_task(pump())
        try:
            ok, output = await self._ansible(work, access, what, on_line)
        finally:
            lines.put_nowait(None)
            await pumper
        return ok, output

    async def _ansible(
        self,
        work: Path,
        access: SshAccess,
        what: dict[str, Any],
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[bool, str]:
        inventory = self._inventory(work, access)
        return await asyncio.to_thread(_run_ansible, work, inventory, what, on_line)

    def _inventory(self, work: Path, access: SshAccess) -> dict[str, Any]:
        known_hosts = self.data_dir / "known_hosts"
        known_hosts.touch(mode=0o600, exist_ok=True)
        host_vars: dict[str, Any] = {
            "ansible_host": access.address,
            "ansible_port": access.port,
            "ansible_user": access.user,
            # Trust on first use, remembered per control server (known_hosts in the data dir): a
            # changed host key fails the run.
        }
        options = [f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts}"]
        if access.private_key:
            key = work / "id_key"
            _write_private(key, (access.private_key.rstrip("\n") + "\n").encode(), 0o600)
            host_vars["ansible_ssh_private_key_file"] = str(key)
            options.append("-o IdentitiesOnly=yes")
        if access.password:
            host_vars["ansible_password"] = access.password
            if not access.private_key:
                # Do not offer whatever keys the control server's user has: a wrong password
                # must fail as such, fast.
                options.append("-o PubkeyAuthentication=no -o PreferredAuthentications=password")
        host_vars["ansible_ssh_common_args"] = " ".join(options)
        return {"all": {"hosts": {"target": host_vars}}}

    # storage

    async def _load(self, host_id: int) -> tuple[Host, SshAccess]:
        async with self.sessions() as session:
            host = await session.get(Host, host_id, populate_existing=True)
            if host is None:
                raise DeploymentFailed("the host was deleted during the deployment")
            return host, self.ssh_access(host)

    async def _write_bundle(self, host_id: int, folder: Path, options: dict[str, str]) -> None:
        async with self.sessions() as session:
            host = await session.get(Host, host_id, populate_existing=True)
            assert host is not None
            files = self.hosts.bundle_files(
                host, bind_address=options["bind_address"], state_dir=options["state_dir"]
            )
            await session.commit()
        for relative, (content, mode) in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(path, content, mode)

    async def _new_port(self, host_id: int) -> int:
        async with self.sessions() as session:
            host = await session.get(Host, host_id, populate_existing=True)
            assert host is not None
            old = host.agent.rpc_port
            while host.agent.rpc_port == old:
                await self.hosts.set_rpc_port(session, host, None)
            await session.commit()
            return host.agent.rpc_port

    async def _mark_online(self, host_id: int) -> None:
        async def op(session: AsyncSession) -> None:
            agent = (await session.execute(select(Agent).where(Agent.host_id == host_id))).scalar_one()
            if agent.status != AGENT_ONLINE:
                session.add(
                    AgentEvent(
                        host_id=host_id, old_status=agent.status, new_status=AGENT_ONLINE, reason="installed"
                    )
                )
            agent.status = AGENT_ONLINE
            agent.needs_reinstall = False
            agent.stopped_by_operator = False
            agent.consecutive_failures = 0

        await self.writer.submit(op)

    async def _say(self, deployment_id: str, message: str) -> None:
        await self._append(deployment_id, f"[myx] {message}\n")

    async def _append(self, deployment_id: str, text: str) -> None:
        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Deployment).where(Deployment.id == deployment_id).values(log=Deployment.log + text)
            )

        await self.writer.submit(op)
        self.events.wake(f"deployment:{deployment_id}")

    async def _end(self, deployment_id: str, status: str, error: str | None) -> None:
        if error:
            await self._say(deployment_id, f"FAILED: {error}")
        now = utcnow()

        async def op(session: AsyncSession) -> None:
            await session.execute(
                update(Deployment)
                .where(Deployment.id == deployment_id)
                .values(status=status, error=error, finished_at=now)
            )

        await self.writer.submit(op)
        self.events.wake(f"deployment:{deployment_id}")
        self.events.publish({"type": "deployment", "id": deployment_id, "status": status})

    # reading

    async def get(self, session: AsyncSession, deployment_id: str) -> Deployment:
        deployment = await session.get(Deployment, deployment_id, populate_existing=True)
        if deployment is None:
            raise NotFound(f"no deployment {deployment_id!r}")
        return deployment

    async def wait(self, deployment_id: str, log_offset: int, timeout: float) -> Deployment:
        """Long-poll: return once the log grew past *log_offset*, the deployment ended, or at the timeout."""

        async def load() -> Deployment:
            async with self.sessions() as session:
                return await self.get(session, deployment_id)

        return await self.events.wait_until(
            f"deployment:{deployment_id}",
            load,
            lambda d: len(d.log) > log_offset or d.status in (SUCCESS, FAILED),
            timeout,
        )

    async def list_for_host(self, session: AsyncSession, host_id: int, limit: int = 50) -> list[Deployment]:
        rows = await session.execute(
            select(Deployment)
            .where(Deployment.host_id == host_id)
            .order_by(Deployment.created_at.desc())
            .limit(limit)
        )
        return list(rows.scalars())


def _run_ansible(
    work: Path, inventory: dict[str, Any], what: dict[str, Any], on_line: Callable[[str], None] | None
) -> tuple[bool, str]:
    """One ansible-runner run (blocking; called in a worker thread). Returns (ok, all output)."""
    import ansible_runner

    collected: list[str] = []

    def handler(event: dict[str, Any]) -> bool:
        text = str(event.get("stdout") or "")
        for line in text.splitlines():
            if line.strip():
                collected.append(line)
                if on_line is not None:
                    on_line(line)
        return True

    envvars = {
        "ANSIBLE_CONFIG": str(tool_dir() / "ansible.cfg"),
        # ansible-runner sets ANSIBLE_HOST_KEY_CHECKING=False unless told otherwise, which puts
        # StrictHostKeyChecking=no ahead of our accept-new: a changed host key must fail the run.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # ansible-runner starts ansible-playbook from PATH: the one installed beside this Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        # ssh control sockets need a short path (the socket path limit is ~100 bytes).
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    private = work / "runner"
    private.mkdir(mode=0o700, exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(private),
        inventory=json.loads(json.dumps(inventory)),
        envvars=envvars,
        event_handler=handler,
        quiet=True,
        host_pattern="all" if "module" in what else None,
        **what,
    )
    if runner.status == "timeout":
        note = f"TIMEOUT: the playbook ran longer than {what.get('timeout')} s and was stopped"
        collected.append(note)
        if on_line is not None:
            on_line(note)
    return runner.status == "successful" and runner.rc == 0, "\n".join(collected)


def _layout_vars(options: dict[str, str]) -> dict[str, str]:
    """Where the agent lives on the host, as the agent playbooks (agent_facts.yml) take it."""
    return {
        "myx_install_dir": options["install_dir"],
        "myx_config_dir": options["config_dir"],
        "myx_state_dir": options["state_dir"],
        "myx_service_manager": options["service_manager"],
    }


def _new_deployment(
    host_id: int, kind: str, user_id: int | None, status: str, note: str | None = None
) -> Deployment:
    """*note*, when given, is the log's first line."""
    return Deployment(
        id=uuid.uuid4().hex,
        host_id=host_id,
        kind=kind,
        status=status,
        created_by=user_id,
        log=f"[myx] {note}\n" if note else "",
    )


def _has_ssh_access(host: Host) -> bool:
    return bool(host.ssh_user and (host.ssh_password_enc or host.ssh_key_enc))


def _write_private(path: Path, content: bytes, mode: int) -> None:
    """Create *path* with *mode* from the start (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)


def _pyz_version(data: bytes) -> str:
    """The version inside a myx-agent.pyz (its myx/__init__.py), without running it."""
    import io
    import re
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            text = archive.read("myx/__init__.py").decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError):
        raise InvalidInput("the agent zipapp has no myx/__init__.py: not a myx-agent.pyz") from None
    found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
    if found is None:
        raise InvalidInput("the agent zipapp does not declare a version")
    return found.group(1)


def _log_line(line: str) -> str:
    """One agent log line out of Ansible's JSON-ish debug output (``    "MYX_LOG| text",``)."""
    text = line[line.index(LOG_PREFIX) + len(LOG_PREFIX) :].rstrip()
    text = text.removesuffix(",").removesuffix('"')
    try:
        return str(json.loads(f'"{text}"'))
    except ValueError:
        return text


def _failure_summary(output: str) -> str:
    """What went wrong, for the deployment's error field: the last failed task and its message."""
    lines = output.splitlines()
    starts = [
        n for n, line in enumerate(lines) if "fatal:" in line or "FAILED!" in line or "UNREACHABLE!" in line
    ]
    if not starts:
        return (output[-2000:] or "the playbook failed without output").strip()
    block = [lines[starts[-1]].strip()]
    for line in lines[starts[-1] + 1 : starts[-1] + 25]:
        if not line.strip() or line.startswith(("PLAY RECAP", "TASK [", "PLAY [")):
            break
        block.append(line.strip())
    # The message is what people need first; the rest of the result follows it.
    messages = [line for line in block if line.startswith(("msg:", '"msg"'))]
    return "\n".join([block[0], *messages, *(line for line in block[1:] if line not in messages)])[:3000]


def _upgrade_failure(output: str) -> str:
    """The reason an SSH upgrade failed, worded for the deployment's error field."""
    for marker, lead in (
        (ROLLED_BACK_MARKER, "rolled back"),
        (ROLLBACK_FAILED_MARKER, "rollback failed"),
        (NOT_INSTALLED_MARKER, "not installed"),
    ):
        if marker in output:
            return f"{lead}: {_marked_message(output, marker)}"
    return _failure_summary(output)


def _marked_message(output: str, marker: str) -> str:
    """The failure message after *marker*: ansible.cfg prints results as YAML, so a long ``msg:``
    goes on over more-indented lines, single-quoted (a quote inside is doubled)."""
    lines = output.splitlines()
    at = max(n for n, line in enumerate(lines) if marker in line)
    indent = len(lines[at]) - len(lines[at].lstrip())
    parts = [lines[at].split(marker, 1)[1]]
    for line in lines[at + 1 :]:
        if not line.strip() or len(line) - len(line.lstrip()) <= indent:
            break
        parts.append(line)
    text = " ".join(part.strip() for part in parts).strip().rstrip("'\"},").strip()
    return text.replace("''", "'")
