"""A local OpenAI-compatible API that enforces rate limits the way real servers do, habits included.

Chat completions and embeddings, on OpenAI routes (/v1/...) and Azure routes
(/openai/deployments/{name}/...?api-version=...). Per model it keeps a requests bucket and a tokens
bucket that hold `window_s` seconds of the per-minute limit (60 = OpenAI's whole-minute bucket;
1 = a server that quantizes to one-second windows; 10 = Azure-like), plus daily counters. The
charge at admission is the server's own estimate: prompt characters / 4 plus n x max_tokens; the
usage it reports is its own approximation too (see batchrun.simulator.model: the simulator shares no
code with what it checks). Replies are deterministic in the request (see `reply_text`), so a test
can tell each result is its own.

    python -m batchrun.simulator --port 8000 --rpm 500 --tpm 200000 --window 1 --latency 0.3

Server habits (each also a field of `SimConfig` / `Habits`):

    --headers-at admission|response   when x-ratelimit-remaining-* is measured (default admission)
    --header-scope window|minute|none the bucket the headers describe: the enforced one, a whole
                                      minute's while `--window` is enforced, or no rate headers
    --refill continuous|quantized     buckets refill smoothly, or fill at each window boundary
    --window 10                       Azure-like 10 s windows
    --jitter S                        latency varies uniformly by ± S seconds
    --tail P                          a share P of requests (e.g. 0.01) take 10 x the latency
    --shared F                        another client of the key uses a share F of every limit
    --lower-at S --lower-to F         S seconds after the first request, limits drop to F x

Batch API: the Files and Batches routes (/v1/files, /v1/batches; Azure's /openai/files and
/openai/batches) on an accelerated clock, with validation, the enqueued-token limit and faults;
see batchrun.simulator.batch for the behaviour and its flags (--batch-seconds, --batch-queue-tokens,
--batch-expire, --batch-expire-batches, --batch-fail-validation, --batch-upload-5xx,
--batch-create-5xx, --batch-poll-5xx, --batch-request-errors), config (`SimConfig.batch`) and
stats (`SimStats.batch`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from batchrun.simulator.batch import BatchApi
from batchrun.simulator.batch_model import BatchConfig, BatchStats
from batchrun.simulator.model import (
    Habits,
    RateModel,
    SimLimits,
    admission_charge,
    draw_latency,
    fmt_duration,
    usage_prompt_tokens,
)

__all__ = ["Faults", "SimConfig", "SimServer", "SimStats", "Simulator", "reply_text",
           "request_digest"]


@dataclass(slots=True)
class Faults:
    """Chances (0..1) that an admitted request meets each fault."""

    error_500: float = 0.0
    error_503: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    truncate: float = 0.0
    no_choices: float = 0.0
    html: float = 0.0
    hang_s: float = 3600.0
    retry_after_503: bool = True  # send a retry-after header with 503s
    # a request with service_tier "flex" finds no capacity (before admission: not billed,
    # not charged to the rate limits), answered as SimConfig.flex_status says
    flex_unavailable: float = 0.0


@dataclass(slots=True)
class SimConfig:
    limits: SimLimits = field(default_factory=SimLimits)
    latency_s: float = 0.0
    jitter_s: float = 0.0
    latency_tail: float = 0.0  # share of requests that take 10 x the latency
    habits: Habits = field(default_factory=Habits)
    faults: Faults = field(default_factory=Faults)
    api_key: str | None = None  # None: any non-empty key is accepted
    insufficient_quota: bool = False
    storm_until: float = 0.0  # clock time until which every request gets a per-minute 429
    echo_key_in_errors: bool = False  # answer 400 quoting the key, as careless proxies do
    seed: int = 0
    organization: str = "org-simulator"
    batch: BatchConfig = field(default_factory=BatchConfig)  # the Batch API (simulator.batch)
    # No flex capacity: OpenAI answers 429 "Resource Unavailable", Groq 498 capacity_exceeded.
    flex_status: int = 429
    # The models that take service_tier "flex" (None: every one); another answers 400
    # invalid_request_error and is not served at standard processing (Azure's documented habit).
    flex_models: frozenset[str] | None = None


@dataclass(slots=True)
class SimStats:
    received: int = 0
    ok: int = 0
    rate_limited: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)  # by request_digest
    admitted_at: list[tuple[float, int]] = field(default_factory=list)  # (time, tokens charged)
    rejected_at: list[tuple[float, str]] = field(default_factory=list)  # (time, which limit)
    batch: BatchStats = field(default_factory=BatchStats)
    service_tiers: Counter[str] = field(default_factory=Counter)  # as the bodies named them
    flex_unavailable: int = 0  # flex requests refused for want of capacity


def request_digest(body: dict[str, Any]) -> str:
    """A stable fingerprint of what was asked (messages or input, and the model)."""
    key = {"model": body.get("model"), "q": body.get("messages", body.get("input"))}
    return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def reply_text(body: dict[str, Any]) -> str:
    return f"Simulated reply {request_digest(body)}"


def _completion_tokens(body: dict[str, Any]) -> int:
    wanted = 8 + int(request_digest(body)[:4], 16) % 8
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    return min(wanted, int(limit)) if limit else wanted


class Simulator:
    def __init__(
        self,
        config: SimConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        batch_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.stats = SimStats()
        self._clock = clock
        self._now_utc = today
        self._models: dict[str, RateModel] = {}
        self._rng = random.Random(self.config.seed)
        # Flex refusals draw from their own sequence: for a seed, how many there are before the
        # N-th success does not depend on how concurrent requests interleave with other faults.
        self._flex_rng = random.Random(self.config.seed)
        self._ids = 0
        # Batch timestamps are Unix seconds: by default the same clock as the day boundaries.
        self.batch = BatchApi(
            self, self.config.batch, self.stats.batch, self.stats.statuses,
            clock=batch_clock or (lambda: self._now_utc().timestamp()),
            seed=self.config.seed, organization=self.config.organization)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self._embeddings)
        self.batch.add_routes(app)
        return app

    # -- handlers -----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, embeddings=False)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, embeddings=True)

    async def _handle(self, request: web.Request, embeddings: bool) -> web.StreamResponse:
        self.stats.received += 1
        azure = "deployment" in request.match_info
        refused = self.refuse(request, azure)
        if refused is not None:
            return refused
        key = self._key(request, azure)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(400, "We could not parse the JSON body of your request.",
                               "invalid_request_error")
        if not isinstance(body, dict):
            return self._error(400, "The body must be a JSON object.", "invalid_request_error")
        model = request.match_info.get("deployment") or body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "you must provide a model parameter", "invalid_request_error")
        body["model"] = model
        field_name = "input" if embeddings else "messages"
        if field_name not in body:
            return self._error(400, f"'{field_name}' is a required property",
                               "invalid_request_error")
        self.stats.attempts[request_digest(body)] += 1
        refused = self.quota_refusal()
        if refused is not None:
            return refused
        flex = self._flex(body, model)
        if flex is not None:
            return flex
        if self._clock() < self.config.storm_until:
            self.stats.rate_limited += 1
            self.stats.statuses[429] += 1
            return self._limit_error(model, "tokens per min (TPM)", 1, 1, 1, 1.0, "tokens")
        if self.config.echo_key_in_errors:
            return self._error(400, f"Unsupported parameter for key {key}: 'frobnicate'.",
                               "invalid_request_error")
        state = self._models.get(model)
        if state is None:
            state = self._models[model] = RateModel(self.config.limits, self.config.habits,
                                                    self._clock())
        cost = admission_charge(body, embeddings)
        now = self._clock()
        refusal = state.admit(cost, now, self._now_utc())
        if refusal is not None:
            self.stats.rate_limited += 1
            self.stats.statuses[429] += 1
            r = refusal
            return self._limit_error(model, r.what, r.limit, r.used, r.requested, r.wait_s,
                                     r.kind, self._headers(state))
        self.stats.admitted_at.append((now, cost))
        at_admission = self.config.habits.header_timing == "admission"
        headers = self._headers(state) if at_admission else None
        latency = draw_latency(self.config.latency_s, self.config.jitter_s,
                               self.config.latency_tail, self._rng)
        if latency:
            await asyncio.sleep(latency)
        fault = await self._fault(request)
        if fault is not None:
            return fault
        payload = self.reply(body, embeddings)
        self.stats.ok += 1
        self.stats.statuses[200] += 1
        return web.Response(body=orjson.dumps(payload), headers=headers or self._headers(state),
                            content_type="application/json")

    # -- shared with the Batch API: these five make a Simulator its batch.Host -------------------

    def _key(self, request: web.Request, azure: bool) -> str:
        return request.headers.get("api-key", "") if azure else (
            request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        )

    def refuse(self, request: web.Request, azure: bool) -> web.Response | None:
        """A 400 for an Azure request without api-version, a 401 for a missing or wrong key."""
        if azure and "api-version" not in request.query:
            return self._error(400, "missing api-version query parameter", "invalid_request_error")
        key = self._key(request, azure)
        if not key or (self.config.api_key is not None and key != self.config.api_key):
            return self._error(
                401, "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys.", "invalid_request_error",
                "invalid_api_key",
            )
        return None

    def quota_refusal(self) -> web.Response | None:
        if not self.config.insufficient_quota:
            return None
        return self._error(
            429, "You exceeded your current quota, please check your plan and billing "
            "details.", "insufficient_quota", "insufficient_quota",
        )

    def reply(self, body: dict[str, Any], embeddings: bool) -> dict[str, Any]:
        """A successful reply's body, the same for a direct request and a batch's."""
        return self._embedding_reply(body) if embeddings else self._chat_reply(body)

    def error(
        self, status: int, message: str, etype: str, code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        return self._error(status, message, etype, code, param=param)

    # -- limits -------------------------------------------------------------------------------

    def _limit_error(
        self, model: str, what: str, limit: int, used: int, requested: int, wait_s: float,
        kind: str, headers: dict[str, str] | None = None,
    ) -> web.Response:
        message = (
            f"Rate limit reached for {model} in organization {self.config.organization} on "
            f"{what}: Limit {limit}, Used {used}, Requested {requested}. Please try again in "
            f"{fmt_duration(wait_s)}. Visit https://platform.openai.com/account/rate-limits "
            "to learn more."
        )
        self.stats.rejected_at.append((self._clock(), what))
        return self._error(429, message, kind, "rate_limit_exceeded", headers)

    def _flex(self, body: dict[str, Any], model: str) -> web.Response | None:
        """A flex request's refusal, if it meets one: its model takes no flex, or no capacity."""
        tier = body.get("service_tier")
        if isinstance(tier, str):
            self.stats.service_tiers[tier] += 1
        if tier != "flex":
            return None
        if self.config.flex_models is not None and model not in self.config.flex_models:
            return self._error(400, f"Unsupported value: 'service_tier' does not support 'flex' "
                               f"with model {model}.", "invalid_request_error",
                               "invalid_request_error", param="service_tier")
        if self._flex_rng.random() >= self.config.faults.flex_unavailable:
            return None
        self.stats.flex_unavailable += 1
        if self.config.flex_status == 429:
            self.stats.statuses[429] += 1
            return self._error(429, "Resource Unavailable: flex processing has no capacity for "
                               "this request right now. Please try again later.",
                               "resource_unavailable", "resource_unavailable")
        return self._error(self.config.flex_status, "Flex tier capacity exceeded. Please try "
                           "again later.", "capacity_exceeded", "capacity_exceeded")

    def _headers(self, state: RateModel) -> dict[str, str]:
        self._ids += 1
        return {"x-request-id": f"req_sim{self._ids:012d}", **state.headers(self._clock())}

    # -- replies and faults -------------------------------------------------------------------

    def _error(
        self, status: int, message: str, etype: str, code: str | None = None,
        headers: dict[str, str] | None = None, param: str | None = None,
    ) -> web.Response:
        if status != 429:
            self.stats.statuses[status] += 1
        body = {"error": {"message": message, "type": etype, "param": param, "code": code}}
        return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                            content_type="application/json")

    def _roll_fault(self) -> str | int | None:
        f = self.config.faults
        roll = self._rng.random()
        for chance, kind in ((f.error_500, 500), (f.error_503, 503), (f.drop, "drop"),
                             (f.hang, "hang"), (f.truncate, "truncate"),
                             (f.no_choices, "no_choices"), (f.html, "html")):
            if roll < chance:
                return kind
            roll -= chance
        return None

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        kind = self._roll_fault()
        if kind is None:
            return None
        f = self.config.faults
        if kind in (500, 503):
            message = (
                "The server had an error while processing your request. Sorry about that!"
                if kind == 500
                else "The engine is currently overloaded, please try again later"
            )
            hint = {"retry-after": "1"} if kind == 503 and f.retry_after_503 else None
            return self._error(int(kind), message, "server_error", None, hint)
        if kind == "html":
            self.stats.statuses[502] += 1
            return web.Response(status=502, content_type="text/html",
                                text="<html><body><h1>502 Bad Gateway</h1></body></html>")
        if kind == "no_choices":
            self.stats.statuses[200] += 1
            return web.Response(body=b'{"id": "chatcmpl-x", "object": "chat.completion"}',
                                content_type="application/json")
        if kind == "hang":
            await asyncio.sleep(f.hang_s)
        transport = request.transport
        if kind == "truncate":
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 400
            await resp.prepare(request)
            await resp.write(b'{"id": "chatcmpl-trunc", "choices": [{"index": 0, "mess')
        if transport is not None:
            transport.close()
        raise asyncio.CancelledError  # the connection is gone; aiohttp ends the handler quietly

    def _chat_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        n = int(body.get("n") or 1)
        completion = _completion_tokens(body) * n
        prompt = usage_prompt_tokens(body)
        return {
            "id": f"chatcmpl-sim{request_digest(body)}",
            "object": "chat.completion",
            "created": int(self._now_utc().timestamp()),
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": reply_text(body), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        }

    def _embedding_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body["input"]
        count = len(inputs) if isinstance(inputs, list) and not all(
            isinstance(x, int) for x in inputs) else 1
        seed = int(request_digest(body)[:8], 16)
        tokens = usage_prompt_tokens(body)
        return {
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i,
                 "embedding": [((seed >> k) % 1000) / 1000 for k in range(8)]}
                for i in range(count)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class SimServer:
    """The simulator on a real loopback socket, owned by `async with`."""

    def __init__(self, simulator: Simulator | None = None, port: int = 0) -> None:
        self.sim = simulator or Simulator()
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SimServer:
        self._runner = web.AppRunner(self.sim.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
