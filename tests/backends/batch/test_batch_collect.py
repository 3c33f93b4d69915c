"""Merging downloaded batch files into the output, line by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchrun.backends.batch.collect import Collector, Merged
from batchrun.files.checkpoint import OutputWriter, read_output


def test_a_body_orjson_cannot_hold_is_merged_as_it_came(tmp_path: Path) -> None:
    downloaded = tmp_path / "output.jsonl"
    big = 2**70 + 1  # orjson reads it as a float (losing digits) or refuses it
    downloaded.write_text(
        '{"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200, '
        f'"request_id": "req_1", "body": {{"seed": {big}, "usage": {{"prompt_tokens": 1, '
        '"completion_tokens": 2}}}, "error": null}\n'
        '{"id": "batch_req_2", "custom_id": "b", "response": {"status_code": 200, '
        '"request_id": "req_2", "body": {"ok": true}}, "error": null}\n'
        'not json at all\n')
    writer = OutputWriter(tmp_path / "out.jsonl")
    done: set[str] = {"b"}  # b has its line already: it is not written again
    merged = Merged()
    Collector(writer, done, lambda event: None).merge(downloaded, {"a", "b"}, "m", 1, merged)
    writer.close()
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 1 and merged.ok == 1 and done == {"a", "b"}
    assert json.loads(lines[0])["response"]["body"]["seed"] == big
    assert read_output(tmp_path / "out.jsonl").done == {"a"}


@pytest.mark.parametrize("status", [401, 402, 403])
def test_a_result_line_refusing_the_account_is_kept_unsent_as_on_the_sync_path(
        tmp_path: Path, status: int) -> None:
    """A status the sync path reads as a refused key or account (classify.status_kind) stops
    the job the same way here, whatever code the line carries: not a failed line for ever."""
    downloaded = tmp_path / "output.jsonl"
    downloaded.write_text(
        '{"id": "batch_req_1", "custom_id": "a", "response": {"status_code": '
        f'{status}, "request_id": "req_1", "body": {{"error": {{"message": "no credit", '
        '"code": null}}}, "error": null}\n')
    writer = OutputWriter(tmp_path / "out.jsonl")
    merged = Merged()
    Collector(writer, set(), lambda event: None).merge(downloaded, {"a"}, "m", 1, merged)
    writer.close()
    assert (tmp_path / "out.jsonl").read_text() == ""
    assert merged.refused is not None and "a" in merged.left and merged.failed == 0
