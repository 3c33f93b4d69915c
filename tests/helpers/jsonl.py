"""Input files written and output files read back, and what an answered line must hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batchrun.simulator import (
    reply_text,
)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """custom_id -> output line; fails the test if any id appears twice."""
    results: dict[str, dict[str, Any]] = {}
    for raw in path.read_bytes().splitlines():
        line = orjson.loads(raw)
        assert line["custom_id"] not in results, f"duplicate output for {line['custom_id']}"
        results[line["custom_id"]] = line
    return results


def prompts(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "prompt": f"Question number {i}", "max_tokens": 10}
            for i in range(n)]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def body_as_sent(row: dict[str, Any], model: str = "gpt-4o-mini") -> dict[str, Any]:
    """What the API receives for an input row (the reader's transformation, restated)."""
    if "body" in row:
        body = dict(row["body"])
    else:
        body = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        if "prompt" in row:
            body["messages"] = [{"role": "user", "content": row["prompt"]}]
    body.setdefault("model", model)
    return body


def assert_all_answered(rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> None:
    assert len(results) == len(rows)
    for row in rows:
        cid = row.get("custom_id") or row["id"]
        line = results[cid]
        assert line["error"] is None, line
        assert line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 200
        # An answer from the response cache was not sent: it has no request id of its own.
        assert response["request_id"] == "" if line.get("cached") else \
            response["request_id"].startswith("req_")
        body = body_as_sent(row)
        if "input" in body:
            assert response["body"]["object"] == "list"
            assert response["body"]["model"] == body["model"]
        else:
            # The simulator's reply is a digest of the request: this answer is this request's.
            assert response["body"]["choices"][0]["message"]["content"] == reply_text(body)


def rows(n: int) -> list[dict[str, object]]:
    return [{"id": f"q{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(n)]
