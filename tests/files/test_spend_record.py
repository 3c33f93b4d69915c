"""The job's spend record (jobs/JOB.spend) when someone or something has written into it."""

from __future__ import annotations

import math
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
