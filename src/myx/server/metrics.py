"""Prometheus metrics, one registry per control-server instance (tests run several in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents = Gauge("myx_agents", "Agents by status", ["status"], registry=self.registry)
        self.commands = Gauge("myx_commands", "Commands by status", ["status"], registry=self.registry)
        self.dispatch_seconds = Histogram(
            "myx_command_dispatch_seconds",
            "execute_command call latency",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_seconds = Histogram(
            "myx_heartbeat_seconds",
            "Heartbeat latency (successful checks)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.heartbeat_failures = Counter(
            "myx_heartbeat_failures_total",
            "Heartbeat checks that failed after retries",
            registry=self.registry,
        )
        self.output_bytes = Counter(
            "myx_output_bytes_stored_total", "Command output bytes stored", registry=self.registry
        )
