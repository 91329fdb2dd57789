from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import Field

from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.schemas import DeploymentOut, Strict

router = APIRouter(prefix="/api/upgrades", tags=["deployments"])


class RolloutIn(Strict):
    target: list[str] = Field(min_length=1, max_length=10000)
    canary: int = Field(1, ge=0, le=1000)
    batch_size: int = Field(10, ge=1, le=1000)
    health_deadline: float = Field(60.0, ge=5, le=3600)
    force: bool = False
    method: Literal["agent", "ssh"] = "agent"


@router.post("", response_model=list[DeploymentOut], status_code=202)
async def start_rollout(
    body: RolloutIn, runtime: RuntimeDep, session: SessionDep, user: CurrentUser
) -> list[DeploymentOut]:
    """Rolling upgrade of many agents to the control server's zipapp: canary hosts first, then waves;
    the first failure stops it. Follow each deployment with GET /api/deployments/{id}."""
    hosts = await runtime.hosts.resolve_targets(session, body.target)
    deployments = await runtime.deployments.start_rollout(
        session, hosts, user.id, body.canary, body.batch_size, body.health_deadline, body.force, body.method
    )
    return [DeploymentOut.of(d) for d in deployments]
