"""The MyX control server: hosts, agents, commands, batches, heartbeats, REST API."""
