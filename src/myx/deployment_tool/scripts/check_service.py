#!/usr/bin/env python3
"""Checks the install playbooks run on a host, with the host's own python3 (>= 3.9, stdlib only).

    check_service.py port-free PORT
        exit 0 when nothing listens on PORT (0.0.0.0 and ::), 1 when something does.
    check_service.py rpc-health URL TOKEN [--cafile FILE] [--certfile FILE --keyfile FILE]
                                          [--timeout SECONDS]
        one JSON-RPC ``health_check`` over HTTPS with certificate verification (and a client
        certificate for agents that require one); exit 0 when the agent answers ``status: ok``,
        1 otherwise.

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


def rpc_health(
    url: str, token: str, cafile: str | None, timeout: float, client: tuple[str, str] | None = None
) -> tuple[bool, str]:
    context = ssl.create_default_context(cafile=cafile)  # verifies the chain and the host name
    if client is not None:
        try:
            context.load_cert_chain(client[0], client[1])
        except (OSError, ssl.SSLError) as exc:
            return False, f"cannot load the client certificate {client[0]}: {exc}"
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="check_service.py", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    port = sub.add_parser("port-free", help="exit 0 if nothing listens on PORT, 1 if something does")
    port.add_argument("port", type=int)
    health = sub.add_parser("rpc-health", help="one JSON-RPC health_check over verified HTTPS")
    health.add_argument("url", help="https://HOST:PORT/RPC_PATH/rpc")
    health.add_argument("token", help="the agent token (X-Agent-Token)")
    health.add_argument("--cafile", help="CA or certificate to verify the agent with (default: system CAs)")
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
        if not args.url.startswith("https://"):
            print(f"not an https URL: {args.url}", file=sys.stderr)
            return 2
        if (args.certfile is None) != (args.keyfile is None):
            print("--certfile and --keyfile go together", file=sys.stderr)
            return 2
        client = (args.certfile, args.keyfile) if args.certfile else None
        ok, message = rpc_health(args.url, args.token, args.cafile, args.timeout, client)
    print(message)
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
