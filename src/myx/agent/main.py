"""``myx-agent``: run the agent, check its config, print its version, supervise it without systemd."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
from typing import Any, List, Optional

from myx import __version__
from myx.agent import agentlog, supervisor, upgrade
from myx.agent.certs import ensure_certificate
from myx.agent.config import AgentConfig, config_path, insecure_mode_problem, load_config
from myx.agent.errors import AgentError, ConfigError
from myx.agent.http import AgentApp
from myx.agent.rpc import AgentRpc
from myx.agent.runner import Runner
from myx.agent.tls import TlsFiles

log = logging.getLogger("myx.agent")

EXIT_CONFIG = 2


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"myx-agent {__version__} (Python {sys.version.split()[0]})")
        return 0
    # Driving a running supervisor needs only its pidfile: these work even with a broken config.
    if args.command == "stop":
        return supervisor.stop(args.pidfile, args.timeout)
    if args.command == "status":
        return supervisor.status(args.pidfile)
    if args.command == "restart":
        return supervisor.restart(args.pidfile)
    try:
        config = load_config(config_path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"myx-agent: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"myx-agent: warning: {warning}", file=sys.stderr)
    if args.command == "check-config":
        return _check_config(config)
    if args.command == "upgrade-watch":
        return upgrade.watch(config.state_dir)
    if args.command == "supervise":
        # Validated above, before daemonizing: a broken config fails the install loudly
        # instead of looping in the back-off.
        return supervisor.supervise(config.path, args.pidfile, args.log, args.daemon)
    return _run(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="myx-agent", description="The MyX agent daemon.")
    config_help = "config file (default: $MYX_AGENT_CONFIG or /etc/myx-agent/config.json)"
    parser.add_argument("--config", "-c", help=config_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in (
        ("run", "serve JSON-RPC over HTTPS and WebSocket"),
        ("check-config", "validate the config and TLS files, then exit"),
        ("upgrade-watch", "(internal) roll back a self-upgrade that does not come up in time"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)
    _add_supervisor_commands(sub, config_help)
    sub.add_parser("version", help="print the version")
    return parser


def _add_supervisor_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], config_help: str
) -> None:
    """The built-in supervisor, for hosts without systemd (containers, WSL, non-root installs)."""
    pidfile_help = "the supervisor's pidfile"
    supervise = sub.add_parser(
        "supervise", help="run the agent as a child and restart it whenever it exits (no systemd)"
    )
    supervise.add_argument("--pidfile", required=True, help=pidfile_help)
    supervise.add_argument("--log", required=True, help="log file: supervisor events and the agent's output")
    supervise.add_argument("--daemon", action="store_true", help="detach; return once the pidfile is written")
    stop = sub.add_parser("stop", help="stop the supervisor named in the pidfile, and its agent")
    stop.add_argument("--pidfile", required=True, help=pidfile_help)
    stop.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for it to exit (default: 30)"
    )
    status = sub.add_parser("status", help="print whether the supervisor runs (exit 0) or not (exit 3)")
    status.add_argument("--pidfile", required=True, help=pidfile_help)
    restart = sub.add_parser("restart", help="make the supervisor restart the agent (SIGHUP)")
    restart.add_argument("--pidfile", required=True, help=pidfile_help)
    for cmd in (supervise, stop, status, restart):
        cmd.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)


def _check_config(config: AgentConfig) -> int:
    problems = []
    for path in (config.certificate_path, config.private_key_path):
        if not os.path.exists(path):
            print(f"myx-agent: note: {path} does not exist; a self-signed pair is generated at first start")
    if os.path.exists(config.private_key_path):
        problem = insecure_mode_problem(config.private_key_path)
        if problem:
            problems.append(problem)
    if config.client_ca_path and not os.path.exists(config.client_ca_path):
        problems.append(f"{config.client_ca_path}: client_ca_path does not exist")
    for problem in problems:
        print(f"myx-agent: {problem}", file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    print(f"myx-agent: config OK: {config.mode} mode on {config.bind_address}:{config.rpc_port}")
    return 0


def _run(config: AgentConfig) -> int:
    agentlog.setup(config.log_level)
    try:
        ensure_certificate(config)
    except AgentError as exc:
        print(f"myx-agent: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    runner = Runner(
        config.state_dir,
        max_concurrent=config.max_concurrent_commands,
        max_output_bytes=config.max_output_bytes,
        retention_seconds=config.result_retention_seconds,
        kill_grace_seconds=config.kill_grace_seconds,
    )
    try:
        runner.load()
    except OSError as exc:
        print(f"myx-agent: cannot use state_dir {config.state_dir}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_serve(config, runner))


def _use_pidfd_child_watcher() -> None:
    """Python < 3.12 watches each child with a helper thread; pidfds make spawning cheaper.

    3.12+ picks pidfds by itself (and deprecates child watchers), older kernels lack them.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # kernel < 5.3 or seccomp: keep the default watcher
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def _serve(config: AgentConfig, runner: Runner) -> int:
    import uvicorn  # imported late: `version` and `check-config` should not pay for it

    _use_pidfd_child_watcher()
    tls = TlsFiles(config.certificate_path, config.private_key_path)
    app = AgentApp(
        AgentRpc(config, runner, tls), runner, config.rpc_path, config.agent_token, config.max_request_bytes
    )
    server_config = uvicorn.Config(
        app,
        host=config.bind_address,
        port=config.rpc_port,
        ssl_certfile=config.certificate_path,
        ssl_keyfile=config.private_key_path,
        ssl_ca_certs=config.client_ca_path,
        ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca_path else ssl.CERT_NONE,
        http="h11",
        ws="wsproto",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        ws_max_size=config.max_request_bytes,
        timeout_graceful_shutdown=5,
    )
    try:
        server_config.load()
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot load the TLS certificate/key cert=%s error=%s", config.certificate_path, exc)
        return EXIT_CONFIG
    assert server_config.ssl is not None
    server_config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.live = server_config.ssl
    log.info(
        "myx-agent %s listening mode=%s address=%s port=%d pid=%d",
        __version__, config.mode, config.bind_address, config.rpc_port, os.getpid(),
    )  # fmt: skip
    server = uvicorn.Server(server_config)
    confirming = asyncio.ensure_future(_confirm_upgrade_once_serving(server, config.state_dir))
    try:
        await server.serve()
    finally:
        confirming.cancel()
    return 0 if server.started else 1


async def _confirm_upgrade_once_serving(server: Any, state_dir: str) -> None:
    """A pending self-upgrade to this version succeeded once we accept connections."""
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.1)
    upgrade.confirm(state_dir)


if __name__ == "__main__":
    sys.exit(main())
