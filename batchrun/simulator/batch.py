"""The simulator's OpenAI Batch API: files and batches on an accelerated, injectable clock.

Batch API
---------
`batchrun.simulator` serves, beside chat and embeddings, the Files and Batches APIs as OpenAI
documents them: `POST/GET /v1/files`, `GET/DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`,
`POST/GET /v1/batches` (list: newest first, `?limit=&after=`, `has_more`, `first_id`, `last_id`,
each batch with its `metadata`), `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`; Azure's
under `/openai/files` and `/openai/batches` with a required `api-version` and the `api-key`
header, where a batch's endpoint and lines' `url` are `/chat/completions` or `/embeddings`, and
an upload and a create answer 201 Created with a `Location` header, as Azure documents.
Objects, statuses and error shapes are the API's; keys and `insufficient_quota` are refused as on
the chat route.

Lifecycle, on the clock (`SimConfig.batch.seconds`, `--batch-seconds`, default 5 s): a batch is
`validating` for a tenth of it, `in_progress` for all of it (`request_counts.completed`/`failed`
grow linearly while you poll), `finalizing` for a tenth, then `completed`. Cancel moves a
`validating` or `in_progress` batch to `cancelling` and, a tenth later, `cancelled`; cancelling a
finalizing or finished batch is a 409. Requests run in file order. `output_file_id` holds the
successes, `error_file_id` the request-level failures (`response.status_code` 400 and an
`{"error": ...}` body, `"error": null`) and, for an expired or cancelled batch, every request it
did not run (`"response": null, "error": {"code": "batch_expired" | "batch_cancelled"}`); each
file exists only when it has lines. Expired and cancelled batches keep what they completed.
At the end `request_counts.failed` is the error file's line count.

Validation (the batch is created, then `failed` with `errors.data[]` of `{code, message, param,
line}`, line numbers 1-based in the uploaded file; blank lines are skipped but counted):
`invalid_json_line`, `invalid_request` (not an object, wrong type, method not POST),
`missing_required_parameter` (custom_id, method, url, body, body.model), `invalid_url` (not the
batch's endpoint), `duplicate_custom_id`, `mismatched_model` (a second model in the file),
`empty_file`, `too_many_requests` (over 50,000, line null), `file_too_large` (over 200 MB, line
null) and `token_limit_exceeded` (line null): the file's prompt tokens (the simulator's own
count) plus those of the same model's batches still validating, in progress, finalizing or
cancelling exceed `--batch-queue-tokens` (default 2,000,000; 0 = no limit), with OpenAI's
wording ("Enqueued token limit reached for MODEL in organization ORG. Limit: 2,000,000 enqueued
tokens. ...", Azure's on Azure routes). The code names other than `invalid_json_line`,
`missing_required_parameter`, `invalid_url`, `duplicate_custom_id` and `token_limit_exceeded`
are the simulator's: key on `line` and `message`. Synchronous errors of create: an unknown
`input_file_id` is a 404, a file not uploaded for `batch`, a bad endpoint, completion window or
metadata (over 16 pairs, keys over 64 or values over 512 characters) a 400.

Faults (fields of `BatchConfig`, flags of `python -m batchrun.simulator`, deterministic with
`--seed`):

    --batch-expire SHARE        a batch expires with SHARE (0..1) of its requests done, at the
                                moment it would have finished; applies to the first
    --batch-expire-batches N    N batches created (default 1; 0 = every batch), so a retry of
                                the rest completes
    --batch-fail-validation N   the first N batches created fail validation (code
                                `invalid_request`, line null)
    --batch-upload-5xx P        chance that an upload gets a 500 (the file is not stored)
    --batch-create-5xx P        chance that a create gets a 500 AFTER the batch was created (it
                                exists and runs, as when a gateway times out: list to find it)
    --batch-poll-5xx P          chance that `GET /v1/batches/{id}` gets a 500
    --batch-request-errors P    share of requests that end in the error file as a 400

In Python: `Simulator(SimConfig(batch=BatchConfig(seconds=0.5)), batch_clock=clock)`, where
`clock()` returns Unix seconds (default: the simulator's `today`, i.e. wall time); with
`seconds=0` a batch is finished at its first poll. `Simulator.batch.clock` may be replaced on a
running simulator (e.g. tests/helpers/sim.py's `RunningSim`: `running.sim.batch.clock = clock`).
`batchrun submit --simulate` serves these routes too (defaults: 5 s, 2,000,000 tokens).

Stats (`SimStats.batch`, a `BatchStats`): `uploads`, `created` (batch id -> its metadata, in
creation order), `cancels`, `polls`, `downloads`, and `runs` (custom_id -> how many times any
batch ran it, success or request-level error), so a test can assert exactly-once billing.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from aiohttp import BodyPartReader, web

from batchrun.simulator.batch_model import (
    ACTIVE,
    Batch,
    BatchConfig,
    BatchStats,
    StoredFile,
    chance,
    error_item,
    metadata_ok,
    validate,
)

__all__ = ["BatchApi", "BatchConfig", "BatchStats", "Host"]

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # the Files API's own limit, above the batch's 200 MB



class Host(Protocol):
    """The chat server the Batch API is served beside, as far as a batch needs it.

    A batch is refused by the same key check and quota as a direct request, answers errors in the
    same shape and runs each request into the same reply, so a test sees one server. Taking these
    four calls, not the server's class, keeps the dependency one-way (the server builds its
    BatchApi; nothing here imports the server).
    """

    def refuse(self, request: web.Request, azure: bool) -> web.Response | None: ...

    def quota_refusal(self) -> web.Response | None: ...

    def error(self, status: int, message: str, etype: str, code: str | None = None,
              param: str | None = None) -> web.Response: ...

    def reply(self, body: dict[str, Any], embeddings: bool) -> dict[str, Any]: ...


class BatchApi:
    """Files and batches for one `Simulator`, advanced lazily from `clock` (Unix seconds).

    No background task moves a batch on: a batch is brought up to the clock's now whenever it
    is read, and every batch before a create (the queue limit) or a list, so a test that sets
    the clock sees the state that time implies, whatever order it polls in.
    """

    def __init__(
        self, host: Host, config: BatchConfig, stats: BatchStats, statuses: Counter[int], *,
        clock: Callable[[], float], seed: int = 0, organization: str = "org-simulator",
    ) -> None:
        self.host = host
        self.config = config  # the host's own object: a test may change it on a running server
        self.stats = stats
        self._statuses = statuses  # the host's count by status, which batch answers add to
        self.clock = clock
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, Batch] = {}
        self._seed = seed
        self._organization = organization
        self._rng = random.Random(seed)
        self._ids = 0

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("/v1", "/openai"):
            app.router.add_post(f"{prefix}/files", self._upload)
            app.router.add_get(f"{prefix}/files", self._list_files)
            app.router.add_get(f"{prefix}/files/{{file_id}}", self._get_file)
            app.router.add_delete(f"{prefix}/files/{{file_id}}", self._delete_file)
            app.router.add_get(f"{prefix}/files/{{file_id}}/content", self._content)
            app.router.add_post(f"{prefix}/batches", self._create)
            app.router.add_get(f"{prefix}/batches", self._list_batches)
            app.router.add_get(f"{prefix}/batches/{{batch_id}}", self._get_batch)
            app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", self._cancel)

    # -- common -------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        digest = hashlib.sha256(f"{self._seed}:{self._ids}".encode()).hexdigest()
        return f"{prefix}{digest[:24]}"

    def _refuse(self, request: web.Request) -> web.Response | None:
        # Not `or`: an aiohttp response is a mapping, falsy when it holds no user data.
        refused = self.host.refuse(request, request.path.startswith("/openai/"))
        return refused if refused is not None else self.host.quota_refusal()

    def _json(self, payload: dict[str, Any], status: int = 200,
              headers: dict[str, str] | None = None) -> web.Response:
        self._statuses[status] += 1
        return web.Response(status=status, body=orjson.dumps(payload), headers=headers,
                            content_type="application/json")

    def _created(self, request: web.Request, payload: dict[str, Any],
                 where: str) -> web.Response:
        """Azure answers an upload and a create with 201 Created and a Location header
        (Files - Upload, api-version 2024-10-21; Batch - Create in the 2025-01-01-preview
        spec); OpenAI with 200."""
        if not request.path.startswith("/openai/"):
            return self._json(payload)
        location = str(request.url.with_path(f"/openai/{where}/{payload['id']}"))
        return self._json(payload, 201, {"Location": location})

    def _bad(self, message: str, param: str | None = None, status: int = 400) -> web.Response:
        return self.host.error(status, message, "invalid_request_error", None, param=param)

    def _server_error(self) -> web.Response:
        return self.host.error(500, "The server had an error while processing your request. "
                              "Sorry about that!", "server_error")

    # -- files --------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        purpose: str | None = None
        filename, data = "", None
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError):  # aiohttp asserts on a non-multipart content type
            return self._bad("The request must be multipart/form-data with 'file' and "
                             "'purpose'.")
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        return self._bad("File is too large: the limit is 512 MB.", "file")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if data is None:
            return self._bad("Missing required parameter: 'file'.", "file")
        if purpose is None:
            return self._bad("Missing required parameter: 'purpose'.", "purpose")
        if purpose not in PURPOSES:
            return self._bad(f"'{purpose}' is not one of {list(PURPOSES)} - 'purpose'",
                             "purpose")
        if self._rng.random() < self.config.upload_5xx:
            return self._server_error()
        file = StoredFile(self._new_id("file-"), filename, purpose, data, int(self.clock()))
        self.files[file.id] = file
        self.stats.uploads += 1
        return self._created(request, file.obj(), "files")

    def _file_or_404(self, request: web.Request) -> StoredFile | web.Response:
        file_id = request.match_info["file_id"]
        file = self.files.get(file_id)
        if file is None:
            return self._bad(f"No such File object: {file_id}", "id", status=404)
        return file

    async def _get_file(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        file = self._file_or_404(request)
        return file if isinstance(file, web.Response) else self._json(file.obj())

    async def _content(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        file = self._file_or_404(request)
        if isinstance(file, web.Response):
            return file
        self.stats.downloads += 1
        self._statuses[200] += 1
        return web.Response(body=file.data, content_type="application/octet-stream")

    async def _delete_file(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        file = self._file_or_404(request)
        if isinstance(file, web.Response):
            return file
        del self.files[file.id]
        return self._json({"id": file.id, "object": "file", "deleted": True})

    async def _list_files(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        self._advance_all()
        purpose = request.query.get("purpose")
        data = [f.obj() for f in reversed(self.files.values())
                if purpose is None or f.purpose == purpose]
        return self._json({"object": "list", "data": data, "has_more": False,
                           "first_id": data[0]["id"] if data else None,
                           "last_id": data[-1]["id"] if data else None})

    # -- batches: create and validate ---------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        azure = request.path.startswith("/openai/")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._bad("We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return self._bad("The body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return self._bad(f"Missing required parameter: '{name}'.", name)
        endpoints = ("/chat/completions", "/embeddings") if azure else (
            "/v1/chat/completions", "/v1/embeddings")
        if body["endpoint"] not in endpoints:
            return self._bad(f"Invalid value: '{body['endpoint']}'. Supported values are: "
                             + ", ".join(f"'{e}'" for e in endpoints) + ".", "endpoint")
        if body["completion_window"] != "24h":
            return self._bad(f"Invalid value: '{body['completion_window']}'. Supported values "
                             "are: '24h'.", "completion_window")
        metadata = body.get("metadata") or {}
        if not metadata_ok(metadata):
            return self._bad("Invalid 'metadata': at most 16 pairs of strings, keys up to 64 "
                             "and values up to 512 characters.", "metadata")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return self._bad(f"No such File object: {body['input_file_id']}", "input_file_id",
                             status=404)
        if file.purpose != "batch":
            return self._bad(f"File {file.id} was uploaded with purpose '{file.purpose}'; a "
                             "batch's input file must have purpose 'batch'.", "input_file_id")
        now = self.clock()
        self._advance_all(now)
        index = len(self.batches) + 1
        requests, model, tokens, errors = validate(file.data, body["endpoint"], self.config)
        cfg = self.config
        if not errors and index <= cfg.fail_validation:
            errors = [error_item("invalid_request", "Simulated validation failure "
                                 "(--batch-fail-validation).")]
        if not errors and cfg.queue_tokens and model is not None:
            queued = sum(b.tokens for b in self.batches.values()
                         if b.model == model and b.status in ACTIVE and b.errors is None)
            if queued + tokens > cfg.queue_tokens:
                errors = [error_item("token_limit_exceeded",
                                     self._queue_message(model, azure))]
        expiring = cfg.expire_share is not None and (
            cfg.expire_batches == 0 or index <= cfg.expire_batches)
        batch = Batch(self._new_id("batch_"), index, body["endpoint"], file.id,
                      dict(metadata), now, file.data, requests, model, tokens, errors or None,
                      cfg.expire_share if expiring else None)
        self.batches[batch.id] = batch
        self.stats.created[batch.id] = dict(metadata)
        if self._rng.random() < cfg.create_5xx:
            return self._server_error()  # the batch exists and runs; only the answer is lost
        return self._created(request, batch.obj(), "batches")

    def _queue_message(self, model: str, azure: bool) -> str:
        limit = self.config.queue_tokens
        if azure:
            return (f"The number of enqueued tokens has surpassed the configured limit of "
                    f"{limit:,} for the deployment '{model}'. Please either increase the limit "
                    "or try again once the current jobs have finished.")
        return (f"Enqueued token limit reached for {model} in organization "
                f"{self._organization}. Limit: {limit:,} enqueued tokens. Please try "
                "again once some in_progress batches have been completed.")

    # -- batches: the clock -------------------------------------------------------------------

    def _advance_all(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for batch in self.batches.values():
            self._advance(batch, now)

    def _advance(self, b: Batch, now: float) -> None:
        step = self.config.seconds / 10
        if b.status == "validating" and now >= b.created_at + step:
            if b.errors:
                self._set(b, "failed", b.created_at + step)
                b.data = b""
                return
            self._set(b, "in_progress", b.created_at + step)
        if b.status == "in_progress":
            start, span = b.at["in_progress_at"], self.config.seconds
            end = start + span
            share = 1.0 if now >= end or span <= 0 else (now - start) / span
            if b.expire_share is not None:
                share = min(share, b.expire_share)
            self._run(b, math.floor(len(b.requests) * share + 1e-9))
            if now >= end:
                if b.expire_share is not None:
                    self._finish(b, "expired", end)
                else:
                    self._set(b, "finalizing", end)
        if b.status == "finalizing" and now >= b.at["finalizing_at"] + step:
            self._finish(b, "completed", b.at["finalizing_at"] + step)
        if b.status == "cancelling" and now >= b.at["cancelling_at"] + step:
            self._finish(b, "cancelled", b.at["cancelling_at"] + step)

    def _set(self, b: Batch, status: str, at: float) -> None:
        b.status = status
        b.at[f"{status}_at"] = at

    def _run(self, b: Batch, upto: int) -> None:
        cfg = self.config
        embeddings = b.endpoint.endswith("/embeddings")
        for custom_id, start, end in b.requests[b.done:upto]:
            body = orjson.loads(b.data[start:end])["body"]
            self.stats.runs[custom_id] += 1
            request_id = "req_" + _line_hash(b, custom_id)
            field_name = "input" if embeddings else "messages"
            problem = None
            if field_name not in body:
                problem = f"'{field_name}' is a required property"
            elif chance(self._seed, b.index, custom_id) < cfg.request_errors:
                problem = "The simulator rejected this request (--batch-request-errors)."
            if problem is None:
                response = {"status_code": 200, "request_id": request_id,
                            "body": self.host.reply(body, embeddings)}
                b.ok += 1
            else:
                error = {"message": problem, "type": "invalid_request_error", "param": None,
                         "code": None}
                response = {"status_code": 400, "request_id": request_id,
                            "body": {"error": error}}
                b.failed += 1
            line = {"id": "batch_req_" + _line_hash(b, custom_id), "custom_id": custom_id,
                    "response": response, "error": None}
            (b.out if problem is None else b.err).append(orjson.dumps(line) + b"\n")
        b.done = max(b.done, upto)

    def _finish(self, b: Batch, status: str, at: float) -> None:
        """End a batch: mark what it did not run (if it started), then write its files."""
        if status in ("expired", "cancelled") and "in_progress_at" in b.at:
            code = f"batch_{status}"
            message = ("This request could not be executed before the completion window "
                       "expired." if status == "expired" else
                       "This request was not executed because the batch was cancelled.")
            for custom_id, _start, _end in b.requests[b.done:]:
                line = {"id": "batch_req_" + _line_hash(b, custom_id),
                        "custom_id": custom_id, "response": None,
                        "error": {"code": code, "message": message}}
                b.err.append(orjson.dumps(line) + b"\n")
        self._set(b, status, at)
        for lines, attr in ((b.out, "output_file_id"), (b.err, "error_file_id")):
            if lines:
                file = StoredFile(self._new_id("file-"), f"{b.id}_{attr[:-8]}.jsonl",
                                  "batch_output", b"".join(lines), int(at))
                self.files[file.id] = file
                setattr(b, attr, file.id)
        b.data, b.out, b.err = b"", [], []  # the files hold the results now

    # -- batches: read, list, cancel ----------------------------------------------------------

    def _batch_or_404(self, request: web.Request) -> Batch | web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return self._bad(f"No such Batch object: {batch_id}", "batch_id", status=404)
        self._advance(batch, self.clock())
        return batch

    async def _get_batch(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        self.stats.polls += 1
        if self._rng.random() < self.config.poll_5xx:
            return self._server_error()
        batch = self._batch_or_404(request)
        return batch if isinstance(batch, web.Response) else self._json(batch.obj())

    async def _list_batches(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return self._bad("Invalid 'limit': must be an integer.", "limit")
        if not 1 <= limit <= 100:
            return self._bad("Invalid 'limit': must be between 1 and 100.", "limit")
        self._advance_all()
        newest_first = list(reversed(self.batches.values()))
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        page = [b.obj() for b in newest_first[:limit]]
        return self._json({"object": "list", "data": page,
                           "first_id": page[0]["id"] if page else None,
                           "last_id": page[-1]["id"] if page else None,
                           "has_more": len(newest_first) > limit})

    async def _cancel(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        batch = self._batch_or_404(request)
        if isinstance(batch, web.Response):
            return batch
        self.stats.cancels += 1
        if batch.status in ("validating", "in_progress"):
            self._set(batch, "cancelling", self.clock())
        elif batch.status != "cancelling":
            return self._bad(f"Cannot cancel a batch with status '{batch.status}'.",
                             status=409)
        return self._json(batch.obj())


def _line_hash(b: Batch, custom_id: str) -> str:
    """The stable part of a result line's id and request id."""
    return hashlib.sha256(f"{b.id}:{custom_id}".encode()).hexdigest()[:24]
