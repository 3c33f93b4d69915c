"""`batchrun report`: a job's timeline as one HTML file, or as JSON."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from batchrun.api import steps
from batchrun.cli import printing
from batchrun.errors import InputError, StateError
from batchrun.files.jobstore import JobStore
from batchrun.report.html import render


def report(
    job: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or its output path")],
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="the HTML file to write (default: beside the job's output, "
                               "OUT.report.html)")] = None,
    json_: Annotated[bool, typer.Option(
        "--json", help="print the report's document (its series) as JSON instead")] = False,
) -> None:
    """Where a job's time went: requests, tokens, 429s and waits against its limits, per
    second, as one self-contained HTML file (or --json)."""
    printing.reply.json = json_
    if json_ and output is not None:
        # -o names the HTML page; silently printing JSON instead would leave the user's file
        # missing (or an old one in place).
        raise InputError("--json prints the report's document on stdout; -o writes the HTML "
                         "page. Give one of them: "
                         f"batchrun report {shlex.quote(job)} --json > doc.json")
    store = JobStore()
    doc = steps.report_document(store, job)
    printing.reply.about(doc["job"]["id"])
    if json_:
        printing.print_json(doc)
    else:
        target = output or default_path(Path(doc["job"]["output"]))
        try:
            target.write_text(render(doc), encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write the report to {target}: {exc.strerror}. Choose "
                             "another path with -o.") from None
        printing.out.print(str(target), markup=False)
    if not doc["recorded"]:
        raise StateError(doc["note"])


def default_path(output: Path) -> Path:
    """OUT.report.html beside the job's output (results.jsonl -> results.report.html)."""
    return output.with_suffix(".report.html")
