"""The control server's security primitives.

``crypto`` encrypts secrets at rest, ``tokens`` hashes passwords and mints API tokens and agent
credentials, ``ca`` is the fleet certificate authority and the TLS contexts used to dial agents.
Everything here is synchronous, free of I/O except the CA's own files, and raises only the
domain errors of :mod:`myx.server.errors`.
"""
