"""Benchmark the control server: API call to stored result for `true`.

Starts a real control server (SQLite by default, or --database-url) and real agents on
loopback, then prints a table of p50/p95 latencies for one command on one agent and for a
fan-out batch over N agents.  DESIGN.md lists the targets.

    python bench/dispatch.py [--runs 100] [--agents 20] [--fanout-runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.benchtable import percentile, print_table
from support.serverproc import ServerProcess


def _one(server: ServerProcess, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        created = server.ok(server.api.post("/api/commands", json={"host": "bench00", "command": "true"}))
        final = server.ok(server.api.get(f"/api/commands/{created['id']}", params={"wait": 30}))
        samples.append((time.perf_counter() - started) * 1000)
        assert final["status"] == "success", final
    return samples


def _fanout(server: ServerProcess, runs: int, agents: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        body = {"target": ["tier=bench"], "command": "true", "max_concurrency": agents}
        created = server.ok(server.api.post("/api/batches", json=body))
        batch = server.ok(server.api.get(f"/api/batches/{created['id']}", params={"wait": 120}))
        samples.append((time.perf_counter() - started) * 1000)
        assert batch["counts"] == {"success": agents}, batch["counts"]
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--fanout-runs", type=int, default=10)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="myx-bench-") as tmp:
        heartbeats = {"MYX_AGENT_HEARTBEAT_MIN_INTERVAL": "1", "MYX_AGENT_HEARTBEAT_MAX_INTERVAL": "2"}
        server = ServerProcess(Path(tmp), database_url=args.database_url, **heartbeats)
        try:
            server.setup().start()
            names = [f"bench{i:02d}" for i in range(args.agents)]
            for name in names:
                server.add_host(name, labels={"tier": "bench"})
                server.start_agent(name)
            for name in names:
                server.wait_status(name, "online", timeout=90)
            _one(server, 5)  # warm up connections
            one = _one(server, args.runs)
            fan = _fanout(server, args.fanout_runs, args.agents)
        finally:
            server.shutdown()
    rows = [
        ("`true` on 1 agent, API to stored result p50 (ms)", statistics.median(one)),
        ("`true` on 1 agent, API to stored result p95 (ms)", percentile(one, 95)),
        (f"`true` fan-out to {args.agents} agents, all stored p50 (ms)", statistics.median(fan)),
        (f"`true` fan-out to {args.agents} agents, all stored p95 (ms)", percentile(fan, 95)),
    ]
    print_table([(name, f"{value:.1f}") for name, value in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
