"""The retry policy of seed 001 §6.4: one call, then retries after 1, 2, 4 s; transport errors only."""

from __future__ import annotations

import asyncio

import pytest

from myx.server.channels.base import AgentHttpError, AgentMethodError
from myx.server.channels.retry import RetryPolicy, with_retries
from myx.server.errors import AgentUnavailable
from myx.server.settings import Settings


def test_default_delays_follow_the_seed() -> None:
    settings = Settings(secret_key="x" * 32)
    policy = RetryPolicy(settings.agent_rpc_retry_max_attempts, settings.agent_rpc_retry_base_delay)
    assert policy.delays() == [1.0, 2.0, 4.0]
    assert sum(policy.delays()) == 7.0  # "总重试时间最多 7 秒（1+2+4）"


def _run(policy: RetryPolicy, outcomes: list[object]) -> tuple[object, list[float], int]:
    slept: list[float] = []
    calls = 0

    async def attempt() -> object:
        nonlocal calls
        outcome = outcomes[calls]
        calls += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go() -> object:
        return await with_retries(policy, attempt, "test", sleep=sleep)

    try:
        result: object = asyncio.run(go())
    except Exception as exc:
        result = exc
    return result, slept, calls


def test_transport_errors_are_retried_then_succeed() -> None:
    down = AgentUnavailable("connection refused")
    result, slept, calls = _run(RetryPolicy(), [down, down, "ok"])
    assert result == "ok"
    assert slept == [1.0, 2.0]
    assert calls == 3


def test_gives_up_after_three_retries() -> None:
    down = AgentUnavailable("timed out")
    result, slept, calls = _run(RetryPolicy(), [down] * 10)
    assert isinstance(result, AgentUnavailable)
    assert "gave up after 4 attempts" in result.message
    assert slept == [1.0, 2.0, 4.0]
    assert calls == 4


@pytest.mark.parametrize(
    "refusal",
    [AgentHttpError(401, "bad token"), AgentHttpError(400, "bad request"), AgentMethodError(-32602, "x")],
)
def test_refusals_are_never_retried(refusal: Exception) -> None:
    result, slept, calls = _run(RetryPolicy(), [refusal, "never"])
    assert result is refusal
    assert slept == []
    assert calls == 1
