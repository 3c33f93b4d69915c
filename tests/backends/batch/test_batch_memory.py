"""What a `--via batch` run keeps of the ids it wrote (issue 21 item 8): a bit per input line,
not a set of a million strings (about 90 MB, which put a 1,000,000-line job at 274 MB peak).
Exactly once still holds: a duplicate line of a merged file is not written twice."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from batchrun.backends.batch.collect import Collector, Merged
from batchrun.backends.batch.done import DoneIds
from batchrun.files.checkpoint import OutputWriter, read_output
from tests.helpers.batch_harness import ok_line

N = 50_000


def test_merging_a_part_keeps_a_bit_per_line_not_its_ids(tmp_path: Path) -> None:
    ids = [f"request-{i}" for i in range(N)]
    downloaded = tmp_path / "part-00001.output.jsonl"
    downloaded.write_bytes(b"".join(ok_line(c) for c in ids) + ok_line(ids[0]))
    writer = OutputWriter(tmp_path / "out.jsonl")
    done = DoneIds(set())
    collector = Collector(writer, done, lambda event: None)
    lines = {cid: line_no for line_no, cid in enumerate(ids, start=1)}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        done.collecting(lines)
        collector.merge(downloaded, set(ids), "gpt-4o-mini", 1, Merged())
        done.collecting({})  # the part is collected: its map goes
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        writer.close()
    assert kept < 1_000_000, f"{kept:,} bytes kept for {N:,} ids"  # a set of them: ~4.5 MB
    assert len(done) == N and "request-7" not in done  # asked by id alone: not this part's
    assert done.has("request-7", 8) and not done.has("request-7", N + 8)
    scan = read_output(tmp_path / "out.jsonl")
    assert len(scan.done) == N == scan.lines  # the duplicate was skipped
