"""The job's spend record (jobs/JOB.spend) when someone or something has written into it."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest

from batchrun.files.spend import SpendJournal, read_spent


@pytest.mark.parametrize("usd", [b"nan", b"-inf", b"inf", b"-5", b"-0.5e3"])
def test_a_hand_edited_amount_that_is_no_spend_neither_poisons_nor_lowers_the_sum(
        tmp_path: Path, usd: bytes) -> None:
    # A NaN made every later "does it fit" False and printed "$nan spent"; a negative
    # amount lowered the job's spend below what the server billed, so the cap let more through.
    path = tmp_path / "job.spend"
    journal = SpendJournal(path)
    journal.settle(journal.reserve(0.5), 0.25)
    journal.close()
    with path.open("ab") as f:
        f.write(b"T " + usd + b"\nS x " + usd + b"\nR y " + usd + b"\n")
    assert read_spent(path) == pytest.approx(0.25)
    again = SpendJournal(path)
    assert math.isfinite(again.spent) and again.spent == pytest.approx(0.25)
    again.close()


def test_reading_a_long_record_takes_memory_for_a_line_not_for_the_file(
        tmp_path: Path) -> None:
    # Every answer of a run adds a line; the record is read whole at the next run's start and
    # for the summary's job_cost_usd at every run's end. Split into a list of lines, a
    # 1,000,000-answer record took ~100 MB on top of the job's own peak.
    path = tmp_path / "job.spend"
    journal = SpendJournal(path)
    for _ in range(100_000):
        journal.settle(journal.reserve(0.001), 0.0005)
    journal.close()
    tracemalloc.start()
    try:
        spent = read_spent(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert spent == pytest.approx(50.0)
    assert peak < 1_000_000  # the file is 4.6 MB
