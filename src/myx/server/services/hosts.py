"""Hosts and their agents' identities (seed 001 §3.1 step 2): token, secret, port, path, certificate."""

from __future__ import annotations

import io
import json
import secrets
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from myx.server.channels.base import AgentEndpoint
from myx.server.db.models import Agent, Host
from myx.server.errors import AlreadyExists, InvalidInput, NotFound
from myx.server.security.ca import FleetCA, fingerprint_of_pem
from myx.server.security.crypto import SecretBox
from myx.server.security.tokens import random_agent_secret, random_agent_token, random_rpc_path

RPC_PORT_RANGE = (8000, 65535)
# An agent in listen mode is dialled from the network.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
# Ports that common services claim; an agent should not collide with them (seed 001 §3.1).
RESERVED_PORTS = frozenset(
    {8000, 8008, 8009, 8080, 8081, 8086, 8088, 8443, 8444, 8500, 8530, 8531, 8888, 9000, 9001, 9042,
     9090, 9091, 9092, 9093, 9100, 9200, 9300, 9418, 9443, 10250, 10255, 11211, 15672, 27017, 27018,
     27019, 28017, 50000, 50070}
)  # fmt: skip


@dataclass
class HostFilter:
    labels: dict[str, str] | None = None
    status: str | None = None
    search: str | None = None


class HostService:
    def __init__(self, box: SecretBox, ca: FleetCA) -> None:
        self.box = box
        self.ca = ca

    # lookups

    async def get(self, session: AsyncSession, ref: str | int) -> Host:
        """A host by id or by name."""
        host: Host | None = None
        text = str(ref)
        if text.isdigit():
            host = await session.get(Host, int(text))
        if host is None:
            host = (await session.execute(select(Host).where(Host.name == text))).scalar_one_or_none()
        if host is None:
            raise NotFound(f"no host {text!r}")
        return host

    async def list_hosts(
        self, session: AsyncSession, flt: HostFilter, limit: int = 100, offset: int = 0
    ) -> tuple[list[Host], int]:
        query = self._filtered(select(Host).join(Agent), flt).order_by(Host.name)
        if flt.labels:
            # Labels live in a JSON column whose query syntax differs per database: filter here.
            hosts = [
                h for h in (await session.execute(query)).unique().scalars() if _has_labels(h, flt.labels)
            ]
            return hosts[offset : offset + limit], len(hosts)
        total = (await session.execute(select(func.count()).select_from(query.subquery()))).scalar_one()
        rows = (await session.execute(query.limit(limit).offset(offset))).unique().scalars()
        return list(rows), int(total)

    async def resolve_targets(self, session: AsyncSession, targets: list[str]) -> list[Host]:
        """Hosts named by ids, names, ``label=value`` selectors or ``all``; each host once, in name order."""
        every = list((await session.execute(select(Host).order_by(Host.name))).unique().scalars())
        by_id = {str(h.id): h for h in every}
        by_name = {h.name: h for h in every}
        chosen: dict[int, Host] = {}
        for target in targets:
            if target == "all":
                chosen.update((h.id, h) for h in every)
            elif "=" in target:
                key, _, value = target.partition("=")
                matched = [h for h in every if h.labels.get(key.strip()) == value.strip()]
                if not matched:
                    raise NotFound(f"no host has the label {target!r}")
                chosen.update((h.id, h) for h in matched)
            elif target in by_name or target in by_id:
                host = by_name.get(target) or by_id[target]
                chosen[host.id] = host
            else:
                raise NotFound(f"no host {target!r}")
        return sorted(chosen.values(), key=lambda h: h.name)

    @staticmethod
    def _filtered(query: Select[Any], flt: HostFilter) -> Select[Any]:
        if flt.status:
            query = query.where(Agent.status == flt.status)
        if flt.search:
            like = f"%{flt.search}%"
            query = query.where(Host.name.like(like) | Host.address.like(like))
        return query

    # changes

    async def create(
        self,
        session: AsyncSession,
        name: str,
        address: str,
        labels: dict[str, str] | None = None,
        description: str = "",
        rpc_port: int | None = None,
    ) -> Host:
        if (await session.execute(select(Host.id).where(Host.name == name))).first() is not None:
            raise AlreadyExists(f"a host named {name!r} already exists")
        if name.isdigit():
            raise InvalidInput("a host name cannot be only digits (it would read as an id)")
        port = await self._pick_port(session, rpc_port)
        host = Host(name=name, address=address, labels=labels or {}, description=description)
        host.agent = Agent(
            mode="listen",
            token_enc=self.box.encrypt(random_agent_token(), aad=f"agent-token:{name}"),
            secret_enc=self.box.encrypt(random_agent_secret(), aad=f"agent-secret:{name}"),
            rpc_port=port,
            rpc_path=random_rpc_path(),
        )
        session.add(host)
        try:
            await session.flush()
        except IntegrityError:
            raise AlreadyExists(f"host {name!r} or rpc_port {port} is already taken") from None
        return host

    async def _pick_port(self, session: AsyncSession, wanted: int | None) -> int:
        taken = set((await session.execute(select(Agent.rpc_port))).scalars())
        if wanted is not None:
            if not 1 <= wanted <= 65535:
                raise InvalidInput("rpc_port must be between 1 and 65535")
            if wanted in taken:
                raise AlreadyExists(f"rpc_port {wanted} is already assigned to another agent")
            return wanted
        low, high = RPC_PORT_RANGE
        for _ in range(1000):
            port = low + secrets.randbelow(high - low + 1)
            if port not in taken and port not in RESERVED_PORTS:
                return port
        raise InvalidInput("no free rpc_port left in 8000-65535")

    async def set_rpc_port(self, session: AsyncSession, host: Host, port: int | None) -> None:
        """Move the agent to *port*, or to a fresh random one when None."""
        host.agent.rpc_port = await self._pick_port(session, port)

    async def delete(self, session: AsyncSession, ref: str | int) -> Host:
        host = await self.get(session, ref)
        await session.delete(host)
        return host

    # secrets and bundles

    def agent_token(self, host: Host) -> str:
        return self.box.decrypt(host.agent.token_enc, aad=f"agent-token:{host.name}")

    def agent_secret(self, host: Host) -> str:
        return self.box.decrypt(host.agent.secret_enc, aad=f"agent-secret:{host.name}")

    def endpoint(self, host: Host) -> AgentEndpoint:
        return AgentEndpoint(
            host_id=host.id,
            name=host.name,
            address=host.address,
            rpc_port=host.agent.rpc_port,
            rpc_path=host.agent.rpc_path,
            token=self.agent_token(host),
            pinned_cert_pem=host.agent.custom_cert_pem.encode() if host.agent.custom_cert_pem else None,
        )

    def pin_certificate(self, host: Host, cert_pem: str) -> None:
        """Trust exactly this certificate for the host's agent (seed 002: custom certificates)."""
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
        except ValueError:
            raise InvalidInput("cert_pem is not a PEM certificate") from None
        host.agent.custom_cert = True
        host.agent.custom_cert_pem = cert_pem
        host.agent.cert_fingerprint = fingerprint_of_pem(cert_pem.encode())
        host.agent.cert_not_after = cert.not_valid_after_utc

    def unpin_certificate(self, host: Host) -> None:
        host.agent.custom_cert = False
        host.agent.custom_cert_pem = None

    def agent_config(self, host: Host, bind_address: str = ALL_INTERFACES, **extra: Any) -> dict[str, Any]:
        """The agent's config.json (paths relative to the config's folder, as the agent resolves them)."""
        return {
            "agent_id": host.name,
            "agent_token": self.agent_token(host),
            "secret_key": self.agent_secret(host),
            "mode": "listen",
            "rpc_port": host.agent.rpc_port,
            "rpc_path": host.agent.rpc_path,
            "bind_address": bind_address,
            "certificate_path": "ssl/agent.crt",
            "private_key_path": "ssl/agent.key",
            "client_ca_path": "ssl/ca.crt",
            **extra,
        }

    def bundle_files(
        self, host: Host, bind_address: str = ALL_INTERFACES, **extra: Any
    ) -> dict[str, tuple[bytes, int]]:
        """config.json + ssl/ for a manual install (seed 000 §2): {relative path: (content, mode)}.

        A fresh certificate is issued each time; the control server never keeps agent keys.
        """
        issued = self.ca.issue_agent_certificate(host.name, [host.address])
        host.agent.cert_fingerprint = issued.fingerprint
        host.agent.cert_not_after = issued.not_after
        self.unpin_certificate(host)
        config = self.agent_config(host, bind_address, **extra)
        return {
            "config.json": (json.dumps(config, indent=2).encode() + b"\n", 0o600),
            "ssl/agent.crt": (issued.cert_pem, 0o644),
            "ssl/agent.key": (issued.key_pem, 0o600),
            "ssl/ca.crt": (self.ca.ca_pem, 0o644),
        }

    def bundle_tar(self, host: Host) -> bytes:
        buf = io.BytesIO()
        now = time.time()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for folder in ("ssl",):
                info = tarfile.TarInfo(folder)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, now
                tar.addfile(info)
            for path, (content, mode) in self.bundle_files(host).items():
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(content), mode, now
                tar.addfile(info, io.BytesIO(content))
        return buf.getvalue()


def _has_labels(host: Host, wanted: dict[str, str]) -> bool:
    return all(host.labels.get(key) == value for key, value in wanted.items())
