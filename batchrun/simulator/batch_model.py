"""The simulator's Batch API state, free of sockets: files, batches, and input validation.

batchrun.simulator.batch serves it over HTTP and moves batches along its clock. Validation counts
prompt tokens with the simulator's own approximation (batchrun.simulator.model), never batchrun's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrun.simulator.model import usage_prompt_tokens

__all__ = ["ACTIVE", "Batch", "BatchConfig", "BatchStats", "StoredFile", "chance", "error_item",
           "metadata_ok", "validate"]

MAX_ERRORS = 100  # validation reports at most this many line errors
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # counted against the queue


@dataclass(slots=True)
class BatchConfig:
    seconds: float = 5.0  # in_progress -> finalizing; validating, finalizing, cancelling: 1/10
    queue_tokens: int = 2_000_000  # enqueued prompt tokens per model; 0 = no limit
    expire_share: float | None = None  # expiring batches stop with this share done
    expire_batches: int = 1  # ... the first N batches created; 0 = every batch
    fail_validation: int = 0  # the first N batches created fail validation
    upload_5xx: float = 0.0
    create_5xx: float = 0.0  # the batch is created, then the answer is a 500
    poll_5xx: float = 0.0
    request_errors: float = 0.0
    max_requests: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024


@dataclass(slots=True)
class BatchStats:
    uploads: int = 0
    created: dict[str, dict[str, str]] = field(default_factory=dict)  # batch id -> metadata
    cancels: int = 0
    polls: int = 0
    downloads: int = 0
    runs: Counter[str] = field(default_factory=Counter)  # custom_id -> times run


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}


@dataclass(slots=True)
class Batch:
    id: str
    index: int  # 1-based creation order, for the faults that hit "the first N"
    endpoint: str
    input_file_id: str
    metadata: dict[str, str]
    created_at: float
    data: bytes
    requests: list[tuple[str, int, int]]  # custom_id and the line's byte span in `data`
    model: str | None
    tokens: int
    errors: list[dict[str, Any]] | None
    expire_share: float | None
    status: str = "validating"
    at: dict[str, float] = field(default_factory=dict)  # "in_progress_at", ... when reached
    done: int = 0
    ok: int = 0
    failed: int = 0
    out: list[bytes] = field(default_factory=list)
    err: list[bytes] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    def obj(self) -> dict[str, Any]:
        """The batch object as the API returns it."""
        started = "in_progress_at" in self.at
        finished = self.status in ("completed", "expired", "cancelled")

        def at(name: str) -> int | None:
            return int(self.at[name]) if name in self.at else None

        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.status == "failed"
            else None,
            "input_file_id": self.input_file_id, "completion_window": "24h",
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": int(self.created_at),
            "in_progress_at": at("in_progress_at"), "expires_at": int(self.created_at) + 86_400,
            "finalizing_at": at("finalizing_at"), "completed_at": at("completed_at"),
            "failed_at": at("failed_at"), "expired_at": at("expired_at"),
            "cancelling_at": at("cancelling_at"), "cancelled_at": at("cancelled_at"),
            "request_counts": {
                "total": len(self.requests) if started else 0,
                "completed": self.ok,
                # At the end, "failed" is the error file's lines, the not-run ones included.
                "failed": self.failed + (
                    len(self.requests) - self.done if finished and started else 0),
            },
            "metadata": self.metadata or None,
        }


def error_item(code: str, message: str, param: str | None = None,
               line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def chance(*parts: object) -> float:
    """A deterministic draw in [0, 1) for these parts, whatever order batches are run in."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:8], 16) / 2**32


def metadata_ok(metadata: Any) -> bool:
    return isinstance(metadata, dict) and len(metadata) <= 16 and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in metadata.items())


def validate(
    data: bytes, endpoint: str, cfg: BatchConfig,
) -> tuple[list[tuple[str, int, int]], str | None, int, list[dict[str, Any]]]:
    """The file's requests (custom_id and byte span), its model, prompt tokens and errors."""
    if len(data) > cfg.max_file_bytes:
        return [], None, 0, [error_item(
            "file_too_large", f"The input file is {len(data):,} bytes; a batch's input file "
            f"can be at most {cfg.max_file_bytes:,} bytes.")]
    requests: list[tuple[str, int, int]] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    model: str | None = None
    model_line = 0
    tokens = 0
    start, number = 0, 0
    while start < len(data) and len(errors) < MAX_ERRORS:
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw, span, start = data[start:end], (start, end), end + 1
        number += 1
        if not raw.strip():
            continue
        problem = check_line(raw, endpoint, number)
        if isinstance(problem, dict):
            errors.append(problem)
            continue
        custom_id, body = problem
        if custom_id in seen:
            errors.append(error_item(
                "duplicate_custom_id", "The custom_id for this request is a duplicate of "
                "another request. The custom_id parameter must be unique for each request in "
                "a batch.", "custom_id", number))
            continue
        seen[custom_id] = number
        line_model = body["model"]
        if model is None:
            model, model_line = line_model, number
        elif line_model != model:
            errors.append(error_item(
                "mismatched_model", f"The model '{line_model}' differs from '{model}' on line "
                f"{model_line}: all requests in a batch must use the same model.",
                "body.model", number))
            continue
        tokens += usage_prompt_tokens(body)
        requests.append((custom_id, *span))
    if not errors and len(requests) > cfg.max_requests:
        errors.append(error_item(
            "too_many_requests", f"The input file has {len(requests):,} requests; a batch can "
            f"have at most {cfg.max_requests:,}."))
    if not errors and not requests:
        errors.append(error_item("empty_file", "The batch input file is empty."))
    return requests, model, tokens, errors


def check_line(raw: bytes, endpoint: str,
               number: int) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    """One line's custom_id and body, or the error that makes it invalid."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return error_item("invalid_json_line", "This line is not parseable as valid JSON.",
                          None, number)
    if not isinstance(line, dict):
        return error_item("invalid_request", "Each line must be a JSON object.", None, number)
    for name in ("custom_id", "method", "url", "body"):
        if name not in line:
            return error_item("missing_required_parameter",
                              f"Missing required parameter: '{name}'.", name, number)
    custom_id, body = line["custom_id"], line["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return error_item("invalid_request", "custom_id must be a non-empty string.",
                          "custom_id", number)
    if line["method"] != "POST":
        return error_item("invalid_request", "Only the POST method is supported in a batch.",
                          "method", number)
    if line["url"] != endpoint:
        return error_item("invalid_url", "The URL provided for this request does not match "
                          "the batch endpoint.", "url", number)
    if not isinstance(body, dict):
        return error_item("invalid_request", "body must be a JSON object.", "body", number)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error_item("missing_required_parameter",
                          "Missing required parameter: 'body.model'.", "body.model", number)
    return custom_id, body
