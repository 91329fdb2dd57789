from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.schemas import DeploymentOut

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


@router.get("/{deployment_id}", response_model=DeploymentOut)
async def get_deployment(
    deployment_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    log_offset: Annotated[int, Query(ge=0, description="return the log from this character on")] = 0,
    wait: Annotated[float, Query(ge=0, le=60, description="long-poll until the log grows or it ends")] = 0,
) -> DeploymentOut:
    if wait > 0:
        deployment = await runtime.deployments.wait(deployment_id, log_offset, wait)
    else:
        deployment = await runtime.deployments.get(session, deployment_id)
    return DeploymentOut.of(deployment, min(log_offset, len(deployment.log)))
