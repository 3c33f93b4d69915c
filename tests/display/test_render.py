"""`batchrun status` as printed: nothing cut through a pipe, nothing lost at 80 columns."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from batchrun.display.render import render_status

JOBS = [{"job_id": f"a-very-long-input-file-name-for-testing-{i}-3f2a1b", "state": "paused-daily",
         "done": 141_234, "total": 2_000_000, "failed": 12_345,
         "updated": "2026-11-28T10:11:12.000+00:00", "input": "/data/in.jsonl",
         "output": f"/data/a-very-long-input-file-name-for-testing-{i}.results.jsonl",
         "message": "", "resume": f"batchrun resume a-very-{i}"} for i in range(2)]
USAGE = [{"host": "api.openai.com", "key_fingerprint": "key-076fb033a1b2", "model": "gpt-4o-mini",
          "tokens": 1_999_999, "tpd": 2_000_000, "requests": 9_999, "rpd": 10_000,
          "exhausted": 0}]
NUMBERS = ["141,234/2,000,000", "12,345", "key-076fb033a1b2", "1,999,999", "2,000,000", "9,999",
           "10,000"]


def printed(terminal: bool, jobs: list[dict[str, Any]]) -> str:
    console = Console(file=io.StringIO(), width=80, force_terminal=terminal, color_system=None)
    render_status(console, jobs, USAGE, "2026-11-28", detail=False)
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_a_pipe_gets_every_number_and_name_whole() -> None:
    text = printed(terminal=False, jobs=JOBS)
    for value in [*NUMBERS, JOBS[0]["job_id"], "a-very-long-input-file-name-for-testing-1.results"]:
        assert value in text, value
    assert "…" not in text


def test_a_narrow_terminal_folds_instead_of_cutting() -> None:
    text = printed(terminal=True, jobs=JOBS)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    joined = "".join(text.split())  # a folded cell continues on the next line of its column
    for value in ("key-076fb033a1b2", "gpt-4o-mini"):
        assert value in text
    assert "1,999,999" in joined and "141,234/2,000,000" in joined
