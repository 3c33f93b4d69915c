"""The command line: the typer app and its commands (send.py runs a job, manage.py looks after
jobs; options.py holds their options, printing.py what they write). Errors become messages and
exit codes here and only here (BATCHRUN_DEBUG=1 re-raises them with a traceback)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.text import Text

from batchrun import __version__, messages
from batchrun.cli import cache, manage, printing, report, send
from batchrun.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, BatchrunError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or "
    "double-bill work.",
)
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: a bug in batchrun, not in the input or the API


def _version(value: bool) -> None:
    if value:
        printing.out.print(f"batchrun {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or
    double-bill work."""


# Registered in the order `batchrun --help` lists them.
for command in (send.submit, send.resume, manage.cancel, manage.forget, manage.status,
                manage.estimate, report.report):
    app.command()(command)
app.add_typer(cache.app, name="cache")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: the one place errors turn into messages."""
    printing.reply.reset()
    try:
        result = app(args=argv, standalone_mode=False)
    except BatchrunError as exc:
        if os.environ.get("BATCHRUN_DEBUG"):
            raise
        # Text, not markup: messages quote ids and server words that may contain brackets.
        prefix = Text("error: ", style="bold red") if exc.exit_code == EXIT_INPUT else Text()
        # Every URL's credentials masked, whoever wrote the message (nothing else is changed).
        message = messages.shown(exc.message)
        printing.err.print(prefix + Text(message))
        printing.answer_error(argv, exc.exit_code, message)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        printing.err.print(messages.INTERRUPTED_EARLY)
        printing.answer_error(argv, EXIT_INTERRUPTED, messages.INTERRUPTED_EARLY)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Usage errors (click's, vendored or not, depending on typer's version) show themselves.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            usage = getattr(exc, "format_message", None)
            printing.answer_error(argv, code, str(usage() if callable(usage) else exc))
            return code
        if os.environ.get("BATCHRUN_DEBUG"):
            raise
        while isinstance(exc, ExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # the task group's wrapping says nothing to a user
        message = messages.internal_error(exc)
        printing.err.print(Text(message, style="bold red"))
        printing.answer_error(argv, EXIT_INTERNAL, message)
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    sys.exit(run())
