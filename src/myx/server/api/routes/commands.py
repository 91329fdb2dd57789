from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.schemas import ChunkOut, CommandBody, CommandCreate, CommandOut, OutputOut, Page
from myx.server.db.models import COMMAND_STATES
from myx.server.services.commands import CommandRequest, OutputPage

router = APIRouter(prefix="/api/commands", tags=["commands"])


def command_request(body: CommandBody) -> CommandRequest:
    return CommandRequest(
        command=body.interpreter if body.script is not None else (body.command or ""),
        args=body.args,
        timeout=body.timeout,
        shell=body.shell,
        script=body.script,
        env=body.env,
        cwd=body.cwd,
        stdin=body.stdin,
    )


def output_out(page: OutputPage) -> OutputOut:
    return OutputOut(
        command_id=page.command_id,
        offset=page.offset,
        next_offset=page.next_offset,
        status=page.status,
        complete=page.complete,
        chunks=[ChunkOut.of(c) for c in page.chunks],
    )


@router.post("", response_model=CommandOut, status_code=201)
async def create_command(
    body: CommandCreate, runtime: RuntimeDep, session: SessionDep, user: CurrentUser
) -> CommandOut:
    host = await runtime.hosts.get(session, body.host)
    command = await runtime.commands.create(host, command_request(body), user.id)
    return CommandOut.of(command)


@router.get("", response_model=Page[CommandOut])
async def list_commands(
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    host: str | None = None,
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(COMMAND_STATES)})$")] = None,
    batch: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[CommandOut]:
    host_id = (await runtime.hosts.get(session, host)).id if host else None
    rows, total = await runtime.commands.list_commands(session, host_id, status, batch, since, limit, offset)
    return Page(items=[CommandOut.of(c) for c in rows], total=total, limit=limit, offset=offset)


@router.get("/{command_id}", response_model=CommandOut)
async def get_command(
    command_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    wait: Annotated[
        float, Query(ge=0, le=300, description="long-poll up to this many seconds for the end")
    ] = 0,
) -> CommandOut:
    if wait > 0:
        return CommandOut.of(await runtime.commands.wait_final(command_id, wait))
    return CommandOut.of(await runtime.commands.get(session, command_id))


@router.get("/{command_id}/output", response_model=OutputOut)
async def command_output(
    command_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=16 << 20)] = 1 << 20,
) -> OutputOut:
    return output_out(await runtime.commands.read_output(session, command_id, offset, limit))


@router.get("/{command_id}/stream")
async def command_stream(
    command_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StreamingResponse:
    """Server-sent events: ``output`` pages as they are stored, then ``end`` with the command."""
    await runtime.commands.read_output(session, command_id, offset, 1)  # 404/400 before streaming starts

    async def events() -> AsyncIterator[str]:
        async for page in runtime.commands.follow(command_id, offset):
            if page is None:
                yield ": keep-alive\n\n"
                continue
            if page.chunks:
                yield f"event: output\ndata: {output_out(page).model_dump_json()}\n\n"
            if page.complete:
                async with runtime.sessions() as s:
                    final = CommandOut.of(await runtime.commands.get(s, command_id))
                yield f"event: end\ndata: {final.model_dump_json()}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


@router.post("/{command_id}/cancel", response_model=CommandOut)
async def cancel_command(
    command_id: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> CommandOut:
    command = await runtime.commands.get(session, command_id)
    channel = None
    if command.host_id is not None:
        host = await runtime.hosts.get(session, command.host_id)
        channel = runtime.channel_for(runtime.hosts.endpoint(host))
    await runtime.commands.cancel(session, command_id, channel)
    session.expire_all()
    return CommandOut.of(await runtime.commands.get(session, command_id))
