"""The retry policy of seed 001 §6.4, as data.

One call, then up to ``max_retries`` retries waiting base, 2·base, 4·base... (1, 2, 4 s by
default).  Only transport trouble is retried: connection errors, timeouts, TLS handshake
failures and 5xx.  A 401/400, a JSON-RPC error (the agent answered) and a command that failed or
timed out on the agent are final at once.  Retries are safe because every command carries its
``command_id`` and the agent runs an id at most once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from myx.server.errors import AgentUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    base_delay: float = 1.0

    def delays(self) -> list[float]:
        return [self.base_delay * 2**i for i in range(self.max_retries)]


async def with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[T]],
    what: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """Run *attempt*; on :class:`AgentUnavailable` wait and retry as the policy says."""
    delays = policy.delays()
    for number in range(len(delays) + 1):
        try:
            return await attempt()
        except AgentUnavailable as exc:
            if number == len(delays):
                raise AgentUnavailable(f"{exc.message} (gave up after {number + 1} attempts)") from exc
            log.info(
                "retrying %s attempt=%d wait=%.1fs error=%s", what, number + 1, delays[number], exc.message
            )
            await sleep(delays[number])
    raise AssertionError("unreachable")
