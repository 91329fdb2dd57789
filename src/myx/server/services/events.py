"""In-process events: live status for UI clients, and wake-ups for output followers.

The database stays the source of truth: a follower woken here re-reads what was stored, so a
missed or coalesced wake-up can never lose output.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

SUBSCRIBER_QUEUE = 1000

T = TypeVar("T")


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._waiters: defaultdict[str, list[asyncio.Future[None]]] = defaultdict(list)

    # broadcast events (host status, command status) for /api/events

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                # A slow UI client loses its oldest events rather than slowing the server down.
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    # wake-ups keyed by a name, e.g. "command:<id>"

    def wake(self, key: str) -> None:
        for fut in self._waiters.pop(key, ()):
            if not fut.done():
                fut.set_result(None)

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Future[None]]:
        """A future that the next :meth:`wake` of *key* completes.

        Register before reading the state you wait on: a wake-up that lands while the read is
        in flight then still counts, instead of being missed until a timeout.
        """
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[key].append(fut)
        try:
            yield fut
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[key]

    async def wait_until(
        self, key: str, probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float
    ) -> T:
        """Re-run *probe* at every wake-up of *key* until *done* says so or *timeout* passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.watch(key) as woken:
                value = await probe()
                remaining = deadline - loop.time()
                if done(value) or remaining <= 0:
                    return value
                await sleep_until(woken, remaining)


async def sleep_until(fut: asyncio.Future[None], timeout: float) -> None:
    """Wait for *fut* at most *timeout* seconds, without cancelling it for other waiters."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(fut), timeout)
