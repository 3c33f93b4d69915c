"""What a library call returns: the Job (how it ended, where its results are), run()'s answers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchrun.files.jobstore import JobState


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests of the job (every run): `done` have a result line, `failed` of them an error."""

    total: int
    done: int
    failed: int

    @property
    def ok(self) -> int:
        return self.done - self.failed

    @property
    def not_done(self) -> int:
        return max(0, self.total - self.done)


@dataclass(frozen=True, slots=True)
class Tokens:
    """Tokens billed by this call (not by the job's earlier runs)."""

    input: int = 0
    output: int = 0
    # The part of `input` the server served from its prompt cache (billed at the cached price).
    cached_input: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    """How a job stands after a call: why it ended (`state`, `exit_code` as the CLI's, `message`
    as the CLI would print it), where its results are, and what this call spent."""

    id: str
    state: JobState
    exit_code: int
    message: str
    input: Path
    output: Path
    counts: Counts
    tokens: Tokens = Tokens()
    cost_usd: float | None = 0.0
    # The CLI's --json summary of this run, if one ran (a dict: left out of == and hash).
    summary: Mapping[str, Any] | None = field(default=None, compare=False)

    def results(self) -> Iterator[dict[str, Any]]:
        """The result lines written so far, as dicts (the OpenAI Batch API output format), in
        the order they were written."""
        with contextlib.suppress(FileNotFoundError), self.output.open("rb") as lines:
            for raw in lines:
                if raw.strip():
                    with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line
                        yield orjson.loads(raw)


class Answers(list[dict[str, Any] | None]):
    """`run()`'s result lines, one per request in input order: None where a request has no
    result yet (the job stopped early: `job` says why; calling `run()` again goes on)."""

    job: Job

    def __init__(self, items: Iterable[dict[str, Any] | None], job: Job) -> None:
        super().__init__(items)
        self.job = job
