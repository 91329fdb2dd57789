"""Channels to agents: one interface, whichever side dialled."""
