"""The response cache as a job uses it (#25): what a line's answer is filed under, where it is
looked up, and the line and event an answer from the cache becomes.

Three modes (--cache, --no-cache, --cache-refresh):

    on       look up before sending; send identical lines once; store every success
    refresh  no lookups, no dedup; every success overwrites what was stored
    off      nothing looked up, nothing stored, every line sent

Whose answers a job may be given: the (host, key) of each endpoint the job is configured with,
every one the user's own; an answer is stored under the endpoint that gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from batchrun.events import RequestFinished
from batchrun.files.cache import ResponseCache
from batchrun.files.checkpoint import result_line
from batchrun.files.ledger import ledger_host
from batchrun.http.endpoint import Endpoint
from batchrun.policy.cachekey import cache_key
from batchrun.policy.classify import reported_cached, reported_usage
from batchrun.policy.prices import Via, request_cost
from batchrun.policy.request import EMBEDDINGS_URL, Request

ON, OFF, REFRESH = "on", "off", "refresh"
MODES = (ON, OFF, REFRESH)


def server_name(endpoint: Endpoint) -> str:
    """The server an answer came from, as the cache files it: the host as the ledger names it
    (one server however its URL is typed: case, a default port, a loopback address) and the
    base URL's path, since two paths on one host can be two services (a gateway's providers,
    a proxy's routes) whose answers are not each other's."""
    return ledger_host(endpoint.host) + urlsplit(endpoint.base_url).path


@dataclass(frozen=True, slots=True)
class Asker:
    """One endpoint as the cache knows it: its server (server_name) and the salted digest of
    its key."""

    host: str
    key: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    """A stored answer, checked: its bytes go into the line as they are."""

    body: bytes
    parsed: dict[str, Any]


def answer_of(stored: bytes, url: str) -> Hit | None:
    """A stored body that is an answer to a request of `url`, or None: a damaged entry is a
    miss (the request is sent), never a wrong line."""
    try:
        parsed = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return None
    want = "data" if url == EMBEDDINGS_URL else "choices"
    if not isinstance(parsed, dict) or not isinstance(parsed.get(want), list):
        return None
    if b"\n" in stored or b"\r" in stored:
        return None  # one output line per answer
    return Hit(stored, parsed)


def saved_usd(model: str, answer: dict[str, Any], via: Via) -> float:
    """What the stored answer's usage costs at list prices at the job's rate: what the job did
    not pay (0 for a model with no price, or an answer that reports no usage)."""
    tokens_in, tokens_out = reported_usage(answer) or (0, 0)
    return request_cost(model, tokens_in, tokens_out, reported_cached(answer), via) or 0.0


def cached_line(custom_id: str, hit: Hit) -> bytes:
    """The output line of an answer the job did not pay for; request_id is not stored."""
    return result_line(custom_id, 200, "", None, None, hit.body, cached=True)


def from_cache(custom_id: str, model: str, hit: Hit, via: Via, endpoint: str = "",
               ) -> RequestFinished:
    """Its tokens are 0: nothing was spent (no ledger, no daily budget, no --max-cost)."""
    return RequestFinished(custom_id, model, True, 0, 0, 0, endpoint=endpoint, from_cache=True,
                           saved_usd=saved_usd(model, hit.parsed, via))


class CacheFlow:
    """A job's use of one ResponseCache in one mode, for the endpoints it may ask (`serve`).

    `host`: the host every endpoint is filed under instead of its own: --simulate's simulators
    listen on a new port every run, and their answers are one simulated server's."""

    def __init__(self, cache: ResponseCache, mode: str, host: str | None = None) -> None:
        assert mode in (ON, REFRESH)
        self.cache = cache
        self.mode = mode
        self._host = host
        self._askers: tuple[Asker, ...] = ()

    def asker(self, host: str, key: bytes) -> Asker:
        return Asker(self._host or host, key)

    @property
    def primary(self) -> Asker:
        """The job's first endpoint: the one a single-endpoint path (the Batch API) asks."""
        return self._askers[0]

    def serve(self, askers: Sequence[Asker]) -> None:
        """The job's endpoints: each one's answers are the user's own."""
        self._askers = tuple(dict.fromkeys(askers))

    @property
    def looks(self) -> bool:
        """Lookups, and identical lines sent once: --cache (not --cache-refresh)."""
        return self.mode == ON

    def key(self, request: Request, asker: Asker | None = None) -> bytes:
        """`request` filed under `asker` (default: the job's first endpoint, which also names
        a request for the job's dedup: any one fixed endpoint would do)."""
        who = asker or self._askers[0]
        return cache_key(who.host, who.key, request.url, request.body)

    def _key_for(self, request: Request, asker: Asker, known: bytes | None) -> bytes:
        """`known`: the request's key under the first endpoint, already computed (a digest of
        the canonical body costs more than the lookup it serves)."""
        if known is not None and asker == self._askers[0]:
            return known
        return self.key(request, asker)

    async def lookup(self, request: Request, key: bytes | None = None) -> Hit | None:
        """`key`: self.key(request), when the caller has it."""
        for asker in self._askers:
            stored = await self.cache.get(self._key_for(request, asker, key))
            if stored is not None and (hit := answer_of(stored, request.url)) is not None:
                return hit
        return None

    async def store(self, request: Request, asker: Asker, body: bytes,
                    key: bytes | None = None) -> None:
        await self.cache.put(self._key_for(request, asker, key), body)
