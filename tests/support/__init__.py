"""Helpers shared by tests and benchmarks: real agent processes on loopback ports."""
