from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from myx.server.api.deps import CurrentUser, RuntimeDep, SessionDep
from myx.server.api.routes.commands import command_request, output_out
from myx.server.api.schemas import BatchCreate, BatchOut, CommandOut, Page
from myx.server.runtime import Runtime
from myx.server.services.batches import BatchRequest

router = APIRouter(prefix="/api/batches", tags=["batches"])


@router.post("", response_model=BatchOut, status_code=201)
async def create_batch(
    body: BatchCreate, runtime: RuntimeDep, session: SessionDep, user: CurrentUser
) -> BatchOut:
    spec = BatchRequest(
        targets=body.target,
        request=command_request(body),
        max_concurrency=body.max_concurrency,
        batch_size=body.batch_size,
        max_failures=body.max_failures,
    )
    batch = await runtime.batches.create(session, spec, user.id)
    summary = await runtime.batches.summary(session, batch.id)
    return BatchOut.of(summary.batch, summary.counts, summary.commands)


@router.get("", response_model=Page[BatchOut])
async def list_batches(
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[BatchOut]:
    batches, total = await runtime.batches.list_batches(session, limit, offset)
    items = []
    for batch in batches:
        summary = await runtime.batches.summary(session, batch.id, with_commands=False)
        items.append(BatchOut.of(batch, summary.counts))
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/{batch_id}", response_model=BatchOut)
async def get_batch(
    batch_id: str,
    runtime: RuntimeDep,
    session: SessionDep,
    _user: CurrentUser,
    wait: Annotated[float, Query(ge=0, le=3600)] = 0,
) -> BatchOut:
    if wait > 0:
        await runtime.batches.wait_final(batch_id, wait)
    session.expire_all()
    summary = await runtime.batches.summary(session, batch_id)
    return BatchOut.of(summary.batch, summary.counts, summary.commands)


@router.post("/{batch_id}/cancel", response_model=BatchOut)
async def cancel_batch(
    batch_id: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> BatchOut:
    await runtime.batches.cancel(session, batch_id)
    session.expire_all()
    summary = await runtime.batches.summary(session, batch_id)
    return BatchOut.of(summary.batch, summary.counts, summary.commands)


@router.get("/{batch_id}/stream")
async def batch_stream(
    batch_id: str, runtime: RuntimeDep, session: SessionDep, _user: CurrentUser
) -> StreamingResponse:
    """Server-sent events for every host of the batch: ``output``, ``command`` (a host ended), ``end``."""
    summary = await runtime.batches.summary(session, batch_id)
    command_ids = [c.id for c in summary.commands]
    return StreamingResponse(
        _merged(runtime, batch_id, command_ids),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


async def _merged(runtime: Runtime, batch_id: str, command_ids: list[str]) -> AsyncIterator[str]:
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=256)

    async def follow(command_id: str) -> None:
        async for page in runtime.commands.follow(command_id):
            if page is not None and page.chunks:
                await queue.put(f"event: output\ndata: {output_out(page).model_dump_json()}\n\n")
            if page is not None and page.complete:
                async with runtime.sessions() as s:
                    done = CommandOut.of(await runtime.commands.get(s, command_id))
                await queue.put(f"event: command\ndata: {done.model_dump_json()}\n\n")

    async def all_done(tasks: list[asyncio.Task[Any]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        await queue.put(None)

    tasks = [asyncio.create_task(follow(cid)) for cid in command_ids]
    closer = asyncio.create_task(all_done(tasks))
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), 15.0)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                break
            yield item
        batch = await runtime.batches.wait_final(batch_id, 3600)
        async with runtime.sessions() as s:
            summary = await runtime.batches.summary(s, batch.id, with_commands=False)
        yield f"event: end\ndata: {BatchOut.of(summary.batch, summary.counts).model_dump_json()}\n\n"
    finally:
        for task in [*tasks, closer]:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, closer, return_exceptions=True)
