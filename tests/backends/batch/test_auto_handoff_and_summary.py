"""`--via auto` as a new user sees it (issue 21, item 15): the hand-off to the Batch API stays on
the screen above the live display, and the summary says what went each way and what it cost."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from tests.helpers.cli import Run, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl

_SEQUENCE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(raw: str, width: int) -> list[str]:
    """What a terminal `width` columns wide shows after `raw`: the few control sequences rich
    writes (cursor up, erase line, colours) applied, as a real terminal would."""
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(raw):
        seq = _SEQUENCE.match(raw, i)
        if seq:
            count = int(seq[1]) if seq[1].isdigit() else 1
            if seq[2] == "A":
                row = max(0, row - count)
            elif seq[2] == "K":
                rows[row] = []
            i = seq.end()
            continue
        char = raw[i]
        i += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0
        else:
            if col == width:  # the terminal wraps a full line
                row, col = row + 1, 0
            while len(rows) <= row:
                rows.append([])
            line = rows[row]
            line.extend(" " * (col - len(line)))
            line[col:col + 1] = [char]
            col += 1
        while len(rows) <= row:
            rows.append([])
    return ["".join(r).rstrip() for r in rows]


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _auto(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    return run_cli("submit", str(jobs), "--simulate", "--via", "auto", "--tpd", "300", *extra,
                   env=env)


@pytest.mark.parametrize("width", [80, 120])
def test_the_hand_off_stays_above_the_live_display(tmp_path: Path, width: int) -> None:
    run = _auto(tmp_path, env={"FORCE_COLOR": "1", "COLUMNS": str(width)})
    assert run.code == 0, run.stderr
    assert "\x1b[1A" in run.stderr  # a live display that moved the cursor ran
    shown = _squeezed("\n".join(screen(run.stderr, width)))
    said = re.search(r"Dailytokenbudgetreachedforgpt-4o-mini:[\d,]+of300tokensusedon"
                     r"\d{4}-\d\d-\d\d\(UTC\):the(\d+)requestsleftgothroughtheBatchAPInow,"
                     r"intothesameoutput\.", shown)
    assert said is not None, "\n".join(screen(run.stderr, width))
    # The text summary names both ways, each with its cost.
    line = next(x for x in run.stdout.splitlines() if x.startswith("via: "))
    assert re.fullmatch(r"via: \d+ sync \(\$[\d.]+\) · \d+ Batch API \(\$[\d.]+, half price\)",
                        line), line


def test_the_summary_says_what_went_each_way_and_what_it_cost(tmp_path: Path) -> None:
    run = _auto(tmp_path, "--json")
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    sync, batch = summary["via"]["sync"], summary["via"]["batch"]
    assert sync["requests"] > 0 and batch["requests"] > 0
    assert sync["requests"] + batch["requests"] == 40
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 40
    # gpt-4o-mini's list price per 1M tokens: $0.15 in, $0.60 out; the Batch API half of it.
    for way, share in ((sync, 1.0), (batch, 0.5)):
        expected = share * (way["tokens"]["input"] * 0.15 + way["tokens"]["output"] * 0.60) / 1e6
        assert way["cost_usd"] == pytest.approx(expected, abs=1e-6)
    # Each figure is rounded to a millionth of a dollar: the two parts and the whole may each be
    # half a millionth off, so their sum may differ from the whole by up to 1.5 millionths.
    assert summary["cost_usd"] == pytest.approx(sync["cost_usd"] + batch["cost_usd"], abs=1.5e-6)
