#!/usr/bin/env python3
"""Checks the install playbooks run on a host, with the host's own python3 (>= 3.9, stdlib only).

    check_service.py port-free PORT
        exit 0 when nothing listens on PORT (0.0.0.0 and ::), 1 when something does.
    check_service.py rpc-health URL (TOKEN | --config CONFIG_JSON) [--cafile FILE | --pin FILE]
                                    [--certfile FILE --keyfile FILE] [--timeout SECONDS]
        one JSON-RPC ``health_check`` over HTTPS with certificate verification (against a CA, or
        pinned to the agent's own certificate) and a client certificate for agents that require
        one; exit 0 when the agent answers ``status: ok``, 1 otherwise.

Every outcome prints one line; exit 2 is a usage error.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import ssl
import sys
import urllib.error
import urllib.request

EXIT_OK = 0
EXIT_FAILED = 1


def _bind_problem(family: int, address: str, port: int) -> str | None:
    """None when *port* can be bound on *address*, else why not."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return None  # no IPv6 on this host: nothing can listen there either
    try:
        # SO_REUSEADDR: connections of an agent that just stopped (TIME_WAIT) do not count as
        # taken; on Linux a socket that is still listening makes the bind fail all the same.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Test [::] by itself; 0.0.0.0 is tested separately.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return None  # IPv6 disabled on this host
        where = f"[{address}]" if family == socket.AF_INET6 else address
        return f"{where}:{port}: {exc.strerror or exc}"
    finally:
        sock.close()
    return None


def port_free(port: int) -> tuple[bool, str]:
    problems = [
        problem
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))  # noqa: S104
        for problem in [_bind_problem(family, address, port)]
        if problem is not None
    ]
    if problems:
        return False, f"port {port} is taken ({'; '.join(problems)})"
    return True, f"port {port} is free"


# OpenSSL's X509_V_FLAG_PARTIAL_CHAIN (ssl.VERIFY_X509_PARTIAL_CHAIN from Python 3.10 on): a
# certificate in the trust store is an anchor even when it is not a self-signed root.
_PARTIAL_CHAIN = getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000)


class CheckError(Exception):
    """A health check that cannot even be tried (bad inputs): message for the user."""


def tls_context(cafile: str | None, pin: str | None, client: tuple[str, str] | None) -> ssl.SSLContext:
    """Verified TLS: against *cafile* (chain and host name), or against exactly the certificate in
    *pin* (the one the agent serves, read from its disk; the name then does not matter)."""
    try:
        if pin is not None:
            context = ssl.create_default_context(cafile=pin)
            context.check_hostname = False  # the pinned certificate itself is the identity
            context.verify_flags |= _PARTIAL_CHAIN
        else:
            context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CheckError(f"cannot load {pin or cafile}: {exc}") from None
    if client is not None:
        try:
            context.load_cert_chain(client[0], client[1])
        except (OSError, ssl.SSLError) as exc:
            raise CheckError(f"cannot load the client certificate {client[0]}: {exc}") from None
    return context


def token_from_config(path: str) -> str:
    """The agent's token from its config.json, so that it never shows on a command line."""
    try:
        with open(path, encoding="utf-8") as fh:
            token = json.load(fh).get("agent_token")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckError(f"cannot read agent_token from {path}: {exc}") from None
    if not isinstance(token, str) or not token:
        raise CheckError(f"{path} has no agent_token")
    return token


def rpc_health(url: str, token: str, context: ssl.SSLContext, timeout: float) -> tuple[bool, str]:
    body = json.dumps({"jsonrpc": "2.0", "method": "health_check", "params": {}, "id": 1}).encode()
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by the caller's URL
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "X-Agent-Token": token},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            reply = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
    result = reply.get("result") if isinstance(reply, dict) else None
    if isinstance(result, dict) and result.get("status") == "ok":
        return True, f"agent healthy: version {result.get('version')}, uptime {result.get('uptime')}"
    error = reply.get("error") if isinstance(reply, dict) else reply
    return False, f"{url}: unexpected reply {json.dumps(error)[:300]}"


def _health(args: argparse.Namespace) -> tuple[bool, str]:
    if not args.url.startswith("https://"):
        raise CheckError(f"not an https URL: {args.url}")
    if (args.token is None) == (args.config is None):
        raise CheckError("give the token, or --config with the agent's config.json (not both)")
    if (args.certfile is None) != (args.keyfile is None):
        raise CheckError("--certfile and --keyfile go together")
    token = args.token if args.config is None else token_from_config(args.config)
    client = (args.certfile, args.keyfile) if args.certfile else None
    return rpc_health(args.url, token, tls_context(args.cafile, args.pin, client), args.timeout)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="check_service.py", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    port = sub.add_parser("port-free", help="exit 0 if nothing listens on PORT, 1 if something does")
    port.add_argument("port", type=int)
    health = sub.add_parser("rpc-health", help="one JSON-RPC health_check over verified HTTPS")
    health.add_argument("url", help="https://HOST:PORT/RPC_PATH/rpc")
    health.add_argument("token", nargs="?", help="the agent token (X-Agent-Token); better: --config")
    health.add_argument("--config", help="read the token from this agent config.json instead")
    trust = health.add_mutually_exclusive_group()
    trust.add_argument("--cafile", help="CA or certificate to verify the agent with (default: system CAs)")
    trust.add_argument("--pin", help="trust exactly this certificate (the agent's own), whatever its name")
    health.add_argument("--certfile", help="client certificate (PEM), for agents that require one")
    health.add_argument("--keyfile", help="the client certificate's private key (PEM)")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds (default: 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "port-free":
        if not 0 < args.port < 65536:
            print(f"invalid port {args.port}", file=sys.stderr)
            return 2
        ok, message = port_free(args.port)
    else:
        try:
            ok, message = _health(args)
        except CheckError as exc:
            print(exc, file=sys.stderr)
            return 2
    print(message)
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
