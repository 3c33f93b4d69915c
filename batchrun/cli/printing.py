"""What the commands write: the consoles, the summary of a run, warnings, and the JSON object
a command answers with under --json (also for an error, so a script reads stdout)."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
import typer
from rich.text import Text

from batchrun import messages
from batchrun.api import steps
from batchrun.display.progress import PipeSafeConsole, drop_output
from batchrun.errors import BatchrunError
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.job import Finished

# soft_wrap: messages are never hard-wrapped at 80 columns; the terminal wraps them.
err = PipeSafeConsole(stderr=True, highlight=False, soft_wrap=True)
out = PipeSafeConsole(highlight=False, soft_wrap=True)


@dataclass(slots=True)
class Reply:
    """What a command has told of itself, so that an error under --json is answered with an
    object on stdout (a script reads stdout; the message also goes to stderr as always)."""

    json: bool = False
    job: str | None = None
    answered: bool = False  # stdout already holds this command's JSON

    def about(self, job_id: str) -> None:
        self.job = job_id

    def reset(self) -> None:  # one process may run several commands (the tests do)
        self.json, self.job, self.answered = False, None, False


reply = Reply()


def print_json(data: Any) -> None:
    """One JSON line on stdout; a reader that has gone (`| head`) does not change the job's
    exit code."""
    reply.answered = True
    try:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        drop_output(sys.stdout)


def answer_error(argv: list[str] | None, exit_code: int, message: str) -> None:
    """--json: an error is an object on stdout too, naming the job and its recorded state."""
    wants = reply.json or "--json" in (sys.argv[1:] if argv is None else argv)
    if not wants or reply.answered:
        return
    state = None
    if reply.job is not None:
        with contextlib.suppress(BatchrunError, OSError):
            manifest = JobStore().get(reply.job)
            state = JobStore().effective_state(manifest) if manifest is not None else None
    print_json({"job": reply.job, "state": state, "exit_code": exit_code,
                 "message": message})


def print_summary(s: dict[str, Any], output: Path, batch: bool = False) -> None:
    out.print("\n".join(messages.summary_lines(s, output, batch)), markup=False)


def finished(plan: Finished, manifest: Manifest) -> NoReturn:
    """Nothing left to send: say so (and how to send the failures again) without a header."""
    message, code = steps.finished_message(plan, manifest)
    if reply.json:
        print_json({"job": manifest.job_id, "state": manifest.state, "exit_code": code,
                     "message": message})
    else:
        out.print(message, markup=False)
    raise typer.Exit(code)


def warn(message: str) -> None:
    err.print(Text("warning: ", style="bold yellow") + Text(message))


def warn_damaged(store: JobStore) -> list[Manifest]:
    """Every readable job; each damaged manifest is named on stderr and skipped."""
    jobs, damaged = store.scan()
    for exc in damaged:
        warn(messages.damaged_manifest(exc.path, exc.reason))
    return jobs
