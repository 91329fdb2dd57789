"""Benchmark the agent directly: health_check calls/s and `true` execute-to-final latency.

Starts a real agent (from source, or the zipapp with --pyz) on a loopback port with TLS and
prints a table.  Numbers depend on the machine; DESIGN.md lists the targets.

    python bench/agent_rpc.py [--seconds 5] [--runs 200] [--concurrency 16] [--pyz dist/myx-agent.pyz]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.agentproc import TOKEN, AgentProcess
from support.benchtable import percentile, print_table


async def _health_rate(agent: AgentProcess, seconds: float, concurrency: int) -> float:
    body = json.dumps({"jsonrpc": "2.0", "method": "health_check", "id": 1}).encode()
    headers = {"X-Agent-Token": TOKEN}
    count = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(verify=agent.ssl_context(), limits=limits) as client:

        async def worker() -> None:
            nonlocal count
            while time.monotonic() < deadline:
                resp = await client.post(agent.url, content=body, headers=headers)
                resp.raise_for_status()
                count += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.monotonic() - started)


def _execute_latency(agent: AgentProcess, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        command_id = agent.call("execute_command", command="true")["command_id"]
        offset = 0
        while True:
            reply = agent.call("get_command_log", command_id=command_id, offset=offset, wait=5)
            offset = reply["new_offset"]
            if reply["is_final"]:
                break
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--runs", type=int, default=200, help="execute-to-final samples")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel clients for the throughput run")
    parser.add_argument("--pyz", type=Path, help="benchmark this zipapp instead of the source tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="myx-bench-") as tmp:
        command = [sys.executable, "-I", str(args.pyz)] if args.pyz else None
        agent = AgentProcess(Path(tmp), command=command, max_concurrent_commands=256)
        agent.start()
        try:
            rows: list[tuple[str, str]] = []
            agent.call("health_check")
            rows.append(
                (
                    "health_check calls/s (1 client)",
                    f"{asyncio.run(_health_rate(agent, args.seconds, 1)):.0f}",
                )
            )
            rate = asyncio.run(_health_rate(agent, args.seconds, args.concurrency))
            rows.append((f"health_check calls/s ({args.concurrency} clients)", f"{rate:.0f}"))
            latency = _execute_latency(agent, args.runs)
            rows.append(("`true` execute-to-final p50 (ms)", f"{statistics.median(latency):.2f}"))
            rows.append(("`true` execute-to-final p95 (ms)", f"{percentile(latency, 95):.2f}"))
            rows.append(("`true` execute-to-final max (ms)", f"{max(latency):.2f}"))
        finally:
            agent.stop()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
