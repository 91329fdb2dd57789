from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from myx.protocol.methods import MAX_TIMEOUT
from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.schemas import (
    AgentEventOut,
    CommandOut,
    DeploymentOut,
    HostCreate,
    HostOut,
    InstallOptions,
    Page,
    SshIn,
    Strict,
)
from myx.server.db.models import AgentEvent
from myx.server.errors import InvalidInput
from myx.server.services.hosts import HostFilter

router = APIRouter(prefix="/api/hosts", tags=["hosts"])


def _labels(selectors: list[str]) -> dict[str, str]:
    labels = {}
    for selector in selectors:
        key, sep, value = selector.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label filter {selector!r} must look like key=value")
        labels[key] = value
    return labels


@router.get("", response_model=Page[HostOut])
async def list_hosts(
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    label: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies query defaults
    status: Annotated[str | None, Query(pattern="^(unknown|online|offline)$")] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[HostOut]:
    hosts, total = await runtime.hosts.list_hosts(
        session, HostFilter(_labels(label), status, q), limit, offset
    )
    return Page(items=[HostOut.of(h) for h in hosts], total=total, limit=limit, offset=offset)


@router.post("", response_model=HostOut, status_code=201)
async def create_host(
    body: HostCreate, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> HostOut:
    host = await runtime.hosts.create(
        session, body.name, body.address, body.labels, body.description, body.rpc_port
    )
    await session.commit()
    return HostOut.of(host, detail=True)


@router.get("/{ref}", response_model=HostOut)
async def get_host(ref: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser) -> HostOut:
    return HostOut.of(await runtime.hosts.get(session, ref), detail=True)


@router.delete("/{ref}", status_code=204)
async def delete_host(ref: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser) -> Response:
    await runtime.hosts.delete(session, ref)
    await session.commit()
    return Response(status_code=204)


@router.get("/{ref}/bundle", response_class=Response)
async def host_bundle(ref: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser) -> Response:
    """config.json + ssl/ as tar.gz for a manual install (a fresh certificate each time)."""
    host = await runtime.hosts.get(session, ref)
    data = runtime.hosts.bundle_tar(host)
    await session.commit()
    headers = {"Content-Disposition": f'attachment; filename="myx-agent-{host.name}.tar.gz"'}
    return Response(data, media_type="application/gzip", headers=headers)


@router.get("/{ref}/events", response_model=list[AgentEventOut])
async def host_events(
    ref: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AgentEventOut]:
    host = await runtime.hosts.get(session, ref)
    rows = await session.execute(
        select(AgentEvent).where(AgentEvent.host_id == host.id).order_by(AgentEvent.id.desc()).limit(limit)
    )
    return [
        AgentEventOut(
            old_status=e.old_status, new_status=e.new_status, reason=e.reason, created_at=e.created_at
        )
        for e in rows.scalars()
    ]


@router.put("/{ref}/ssh", response_model=HostOut)
async def set_ssh(
    ref: str, body: SshIn, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> HostOut:
    """SSH access for installs; the password/key are stored encrypted and never returned."""
    host = await runtime.hosts.get(session, ref)
    runtime.deployments.set_ssh(host, body.user, body.port, body.password, body.private_key)
    await session.commit()
    return HostOut.of(host, detail=True)


@router.post("/{ref}/install", response_model=DeploymentOut, status_code=202)
async def install_agent(
    ref: str,
    runtime: RuntimeDep,
    session: SessionDep,
    user: CurrentUser,
    body: InstallOptions | None = None,
) -> DeploymentOut:
    """Install (or reinstall) the agent over SSH; follow GET /api/deployments/{id}."""
    host = await runtime.hosts.get(session, ref)
    options = body.given() if body else {}
    return DeploymentOut.of(await runtime.deployments.start(session, host, "install", user.id, **options))


@router.post("/{ref}/uninstall", response_model=DeploymentOut, status_code=202)
async def uninstall_agent(
    ref: str, runtime: RuntimeDep, session: SessionDep, user: CurrentUser
) -> DeploymentOut:
    host = await runtime.hosts.get(session, ref)
    return DeploymentOut.of(await runtime.deployments.start(session, host, "uninstall", user.id))


@router.get("/{ref}/deployments", response_model=list[DeploymentOut])
async def host_deployments(
    ref: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> list[DeploymentOut]:
    host = await runtime.hosts.get(session, ref)
    return [
        DeploymentOut.of(d, log_offset=len(d.log))
        for d in await runtime.deployments.list_for_host(session, host.id)
    ]


@router.post("/{ref}/certificate", response_model=HostOut)
async def rotate_certificate(
    ref: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> HostOut:
    """Issue a new agent certificate and hot-swap it on the agent (commands in flight keep running)."""
    host = await runtime.hosts.get(session, ref)
    return HostOut.of(await runtime.certificates.rotate(session, host), detail=True)


@router.post("/{ref}/upgrade", response_model=DeploymentOut, status_code=202)
async def upgrade_agent(
    ref: str,
    runtime: RuntimeDep,
    session: SessionDep,
    user: CurrentUser,
    health_deadline: Annotated[float, Query(ge=5, le=3600)] = 60,
    force: bool = False,
    method: Annotated[str, Query(pattern="^(agent|ssh)$")] = "agent",
) -> DeploymentOut:
    """Upgrade to the control server's agent zipapp, online through the agent (method=agent) or with
    upgrade_agent.yml over SSH (method=ssh); a version that does not come up is rolled back."""
    host = await runtime.hosts.get(session, ref)
    return DeploymentOut.of(
        await runtime.deployments.start_upgrade(session, host, user.id, health_deadline, force, method)
    )


@router.post("/{ref}/agent/{action}")
async def agent_service(
    ref: str,
    action: Annotated[str, Path(pattern="^(start|stop|restart|status)$")],
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    via: Annotated[str, Query(pattern="^(agent|ssh)$")] = "ssh",
) -> dict[str, str]:
    """Agent lifecycle: ``restart`` through the agent itself (via=agent) or any action over SSH."""
    host = await runtime.hosts.get(session, ref)
    if via == "agent":
        if action != "restart":
            raise InvalidInput(
                "through the agent only 'restart' is possible; use via=ssh for start/stop/status"
            )
        reply = await runtime.channel_for(runtime.hosts.endpoint(host)).call("restart_agent")
        return {"host": host.name, "action": action, "state": str(reply.get("status"))}
    state = await runtime.deployments.service_action(host, action)
    return {"host": host.name, "action": action, "state": state}


class PlaybookIn(Strict):
    playbook: str = Field(min_length=1, max_length=1024, examples=["playbooks/ping.yml"])
    extra_vars: dict[str, Any] | None = None
    timeout: float = Field(1800.0, gt=0, le=MAX_TIMEOUT)
    method: Literal["agent", "ssh"] = "agent"


class PlaybookOut(BaseModel):
    method: str
    sync: dict[str, Any] | None = None
    command: CommandOut | None = None
    deployment: DeploymentOut | None = None


@router.post("/{ref}/playbooks", response_model=PlaybookOut, status_code=201)
async def run_playbook(
    ref: str, body: PlaybookIn, runtime: RuntimeDep, session: SessionDep, user: CurrentUser
) -> PlaybookOut:
    """Run a playbook of the deployment tool on the host.

    method=agent: sync the tool to the agent (skipped when unchanged) and run it there as a
    command (follow /api/commands/{id}/stream). method=ssh: run it from the control server over SSH
    as a deployment (follow /api/deployments/{id}); its extra_vars must be plain data."""
    host = await runtime.hosts.get(session, ref)
    if body.method == "ssh":
        deployment = await runtime.deployments.start_playbook(
            session, host, body.playbook, body.extra_vars, body.timeout, user.id
        )
        return PlaybookOut(method="ssh", deployment=DeploymentOut.of(deployment))
    synced, command = await runtime.ansible.run_playbook(
        host, body.playbook, body.extra_vars, body.timeout, user.id
    )
    return PlaybookOut(method="agent", sync=synced, command=CommandOut.of(command))


class CustomCertIn(Strict):
    cert_pem: str = Field(min_length=1, max_length=64 << 10)


@router.put("/{ref}/certificate", response_model=HostOut)
async def pin_custom_certificate(
    ref: str, body: CustomCertIn, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> HostOut:
    """The agent uses a certificate of its own (seed 002): trust exactly that one (fingerprint pinning)."""
    host = await runtime.hosts.get(session, ref)
    runtime.hosts.pin_certificate(host, body.cert_pem)
    await session.commit()
    return HostOut.of(host, detail=True)
