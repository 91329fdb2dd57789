"""``myx``: the command line. Every failure is one readable line, never a traceback."""

from __future__ import annotations

import sys

import typer

from myx import __version__
from myx.cli import admin, remote, up
from myx.cli.client import CliError

app = typer.Typer(
    name="myx",
    help="MyX: manage a fleet of Linux hosts through agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("up")(up.up)
app.command("server")(admin.server)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.user_app, name="user")
app.add_typer(admin.token_app, name="token")
app.command("login")(remote.login)
app.add_typer(remote.hosts_app, name="hosts")
app.add_typer(remote.commands_app, name="commands")
app.command("run", cls=remote.RunCommand, context_settings=remote.RUN_CONTEXT_SETTINGS)(remote.run)
app.command("logs")(remote.logs)


@app.command("version")
def version() -> None:
    """Print the version."""
    typer.echo(f"myx {__version__}")


def main(argv: list[str] | None = None) -> int:
    try:
        # Without standalone mode, click hands back typer.Exit's code instead of exiting.
        code = app(args=argv, prog_name="myx", standalone_mode=False)
    except CliError as exc:
        print(f"myx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        print("myx: aborted", file=sys.stderr)
        return 1
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
