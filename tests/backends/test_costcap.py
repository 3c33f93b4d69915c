"""--max-cost's running sums (backends.costcap) when the sync path and Batch API parts share a
job's spend."""

from __future__ import annotations

from pathlib import Path

from batchrun.backends.costcap import CostCap
from batchrun.files.spend import KEPT, SpendJournal
from batchrun.policy.prices import Price, Via
from batchrun.policy.sizing import Size

MINI = Price(0.15, 0.075, 0.60)


def test_the_sync_path_counts_what_batches_still_on_the_server_hold(tmp_path: Path) -> None:
    # `resume --via sync` runs the sync path beside the job's batches on the server and
    # collects them after: their holds were left out, so the sync requests spent the room
    # the batches' bills then took, past the cap.
    path = tmp_path / "job.spend"
    earlier = SpendJournal(path)
    earlier.reserve(0.009, KEPT + "part-1")  # a part created by an earlier --via batch run
    earlier.close()
    journal = SpendJournal(path)
    cap = CostCap(0.01, journal, lambda model, endpoint: MINI, Via.SYNC)
    one = Size(prompt=1_000, max_output=1_000, charge=2_000, chars=1_000)  # worst ~$0.0008

    first = cap.reserve("gpt-4o-mini", one)
    second = cap.reserve("gpt-4o-mini", one)

    assert first is not None  # $0.009 + $0.0008 fits under $0.01
    assert second is None  # $0.009 + 2 x $0.0008 does not
    journal.close()
