"""HTTP to an OpenAI-compatible API: what a response means, and the session that sends.

`classify` is the table in DESIGN.md, as a pure function of status, headers and body; `ApiClient`
owns the one aiohttp session of a run. Where requests go and how they authenticate is
`batchrun.endpoint`, re-exported here.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from batchrun.endpoint import (
    AZURE_API_VERSION,
    OPENAI_BASE_URL,
    Endpoint,
    env_proxy,
    proxy_for,
    without_userinfo,
)
from batchrun.errors import redact
from batchrun.jobs import EMBEDDINGS_URL, Request
from batchrun.limiter import ServerState

__all__ = [
    "AZURE_API_VERSION",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_REPORTED_TOKENS",
    "OPENAI_BASE_URL",
    "ApiClient",
    "Endpoint",
    "Kind",
    "Outcome",
    "classify",
    "parse_duration",
    "proxy_for",
    "reported_usage",
    "retry_hint",
    "server_state",
    "without_userinfo",
]

# Far above any real answer (a 128K-token completion is well under 1 MB; a batch of embeddings a
# few MB), low enough that a broken or hostile server cannot take the machine's memory.
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# No single request is billed more tokens than this; a server reporting more is wrong, and one
# absurd number must not wipe out (or hand back) a whole day's budget.
MAX_REPORTED_TOKENS = 10_000_000
# orjson writes at most 254 levels of nesting; a deeper body could not be recorded.
_MAX_DEPTH = 255
# Codes that mean the account cannot pay or the key is not accepted: retrying cannot help.
REFUSAL_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "account_deactivated",
        "invalid_api_key",
        "invalid_organization",
    }
)


class Kind(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # 5xx, timeouts, dropped connections, unparseable bodies
    RATE_MINUTE = "rate_minute"  # retry after the hint; not a failure
    RATE_DAY = "rate_day"  # today's budget is spent: pause the job
    REFUSED = "refused"  # bad key, no quota: stop the job
    FAIL = "fail"  # other 4xx: record at once


@dataclass(slots=True)
class Outcome:
    kind: Kind
    status: int | None = None
    body: Any = None
    request_id: str = ""
    server: ServerState | None = None
    hint_s: float | None = None
    code: str = ""
    message: str = ""
    sent: bool = True  # False: failed before anything left this machine
    # "Request too large … tokens per min (TPM): Limit L": the server's real TPM, which may be
    # lower than the one we pace to; queued requests larger than it can never succeed either.
    server_limit_tokens: int | None = None

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens the server billed as far as we know; (0, 0) when unknown:
        check `usage_known` before settling a reservation with it."""
        return self._reported() or (0, 0)

    @property
    def usage_known(self) -> bool:
        """False when the server may have billed tokens it did not report: no complete answer
        (timeout, reset, truncated body), a 200 without usable `usage`, or a 5xx/408 (the
        gateway may have given up on a backend that ran the request). Settle those at their
        reservation. Other errors (4xx, 3xx) are not billed, and an unsent request cannot be."""
        if not self.sent:
            return True
        if self.status is None:
            return False
        if 200 <= self.status < 300:
            return self._reported() is not None
        return self.status < 500 and self.status != 408

    def _reported(self) -> tuple[int, int] | None:
        if self.status is None or not 200 <= self.status < 300:
            return None
        return reported_usage(self.body)


def _token_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(value)
    if not 0 <= value < math.inf:  # NaN fails too
        raise ValueError(value)
    return min(int(value), MAX_REPORTED_TOKENS)


def reported_usage(body: Any) -> tuple[int, int] | None:
    """The `usage` a 2xx body reports, clamped to [0, MAX_REPORTED_TOKENS]; None if it reports
    none or anything that is not a count (a string, a negative, a boolean)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    fields = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
    if fields == (None, None):
        return None
    try:
        prompt, completion = (0 if v is None else _token_count(v) for v in fields)
    except ValueError:
        return None
    return prompt, completion


_NUM = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUM}h)?(?:{_NUM}m(?!s))?(?:{_NUM}s)?(?:{_NUM}ms)?")
_LIMIT = re.compile(r"Limit:?\s*(\d[\d,]*)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:h|ms|m|s))+)", re.IGNORECASE)


def _seconds(value: float | None) -> float | None:
    """A usable wait: finite and not negative (a NaN would poison every later comparison)."""
    return value if value is not None and 0 <= value < math.inf else None


def parse_duration(text: str) -> float | None:
    """'1.574s', '6m0s', '20ms', '1h2m3s', or plain seconds '2' -> seconds."""
    text = text.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    match = _DURATION.fullmatch(text)
    if not match or not any(match.groups()):
        return None
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return _seconds(h * 3600 + m * 60 + s + ms / 1000)


def retry_hint(headers: Mapping[str, str], message: str) -> float | None:
    """How long the server asks us to wait, from whichever hint it gave."""
    if "retry-after-ms" in headers:
        millis = parse_duration(headers["retry-after-ms"])
        if millis is not None:
            return millis / 1000
    if "retry-after" in headers:
        seconds = parse_duration(headers["retry-after"])
        if seconds is not None:
            return seconds
    match = _TRY_AGAIN.search(message)
    if match:
        return parse_duration(match.group(1))
    resets = [
        parse_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))
        for kind in ("requests", "tokens")
    ]
    known = [r for r in resets if r is not None]
    return min(known) if known else None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    try:
        value = float(headers[name])
    except (KeyError, ValueError):
        return None
    return int(value) if 0 <= value < math.inf else None  # inf/NaN/negative: ignore


def server_state(headers: Mapping[str, str]) -> ServerState | None:
    state = ServerState(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
    )
    return None if state == ServerState() else state


def _error_fields(body: Any) -> tuple[str, str, str]:
    """(code, type, message) of an OpenAI error body, or empty strings."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", "", ""
    return str(err.get("code") or ""), str(err.get("type") or ""), str(err.get("message") or "")


def _scrub(value: Any, secret: str) -> Any:
    """An error body with the key and anything key-shaped redacted."""
    if isinstance(value, str):
        return redact(value, secret)
    if isinstance(value, dict):
        return {k: _scrub(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secret) for v in value]
    return value


def _parse(raw: bytes) -> Any:
    """The JSON body; None if it is not JSON or too deeply nested to write back out."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    # Counting brackets is cheap and bounds the depth; only a body with that many pays for the
    # real check. Real answers are a few levels deep.
    if raw.count(b"[") + raw.count(b"{") >= _MAX_DEPTH:
        try:
            orjson.dumps(body)
        except orjson.JSONEncodeError:
            return None
    return body


def _request_id(headers: Mapping[str, str]) -> str:
    return headers.get("x-request-id") or headers.get("apim-request-id") or ""


def classify(status: int, headers: Mapping[str, str], raw: bytes, url: str, secret: str) -> Outcome:
    """Decide what a response means. Pure: no I/O."""
    request_id = _request_id(headers)
    body = _parse(raw)
    # Error bodies are the server's words about our request and may quote the key or echo our
    # headers. A model's answer is the user's data and is never rewritten: a model cannot read
    # the request's headers, so an answer quoting the key is the user's own doing.
    if status != 200:
        body = _scrub(body, secret)
    state = server_state(headers)
    out = Outcome(Kind.OK, status, body, request_id, state)
    if status == 200:
        want = "data" if url == EMBEDDINGS_URL else "choices"
        if isinstance(body, dict) and isinstance(body.get(want), list):
            return out
        out.kind, out.code = Kind.RETRY, "invalid_response"
        out.message = f"the server answered 200 without {want!r} (truncated or not JSON)"
        return out
    if 300 <= status < 400:
        # Following would carry the key (aiohttp keeps `api-key` across hosts) and the prompt to
        # wherever the server pointed, and accept that host's answer as the result.
        where = redact(without_userinfo(headers.get("location", "")), secret) or "nowhere"
        out.kind, out.code = Kind.FAIL, "redirected"
        out.message = (
            f"the server answered HTTP {status}, redirecting to {where}; batchrun does not follow "
            "redirects. If that is the API's real address, give it as --base-url "
            "(or --azure-endpoint)."
        )
        return out
    code, etype, message = _error_fields(body)
    message = redact(message, secret)
    if not message:
        snippet = redact(raw[:200].decode("utf-8", "replace"), secret).strip()
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    out.code, out.message = code or etype or f"http_{status}", message
    if code in REFUSAL_CODES or etype in REFUSAL_CODES or status in (401, 402, 403):
        out.kind = Kind.REFUSED
    elif status == 429 and message.lower().startswith("request too large"):
        # Final: asking again cannot make it fit (DESIGN: one larger than the limit fails fast).
        out.kind, out.code = Kind.FAIL, "request_too_large"
        limit = _LIMIT.search(message)
        if limit and ("per min" in message or "(TPM)" in message):
            out.server_limit_tokens = int(limit.group(1).replace(",", ""))
    elif status == 429:
        daily = "per day" in message or "(TPD)" in message or "(RPD)" in message
        out.kind = Kind.RATE_DAY if daily else Kind.RATE_MINUTE
        out.hint_s = retry_hint(headers, message)
    elif status in (408, 409) or status >= 500:
        out.kind = Kind.RETRY
    else:
        out.kind = Kind.FAIL
    return out


class ApiClient:
    """The run's one HTTP session: keep-alive, a per-request timeout, the key in a header."""

    def __init__(
        self,
        endpoint: Endpoint,
        api_key: str,
        timeout_s: float,
        max_connections: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.endpoint = endpoint
        self._max_response_bytes = max_response_bytes
        # Resolved once, not by aiohttp's trust_env: that also reads ~/.netrc and adds its
        # password as Basic auth beside our key (a ValueError on every request to OpenAI).
        self._proxy = env_proxy(endpoint.base_url)
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        auth = {"api-key": api_key} if endpoint.azure else {"Authorization": f"Bearer {api_key}"}
        self._headers = {**auth, "Content-Type": "application/json"}

    async def __aenter__(self) -> ApiClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: Request) -> Outcome:
        assert self._session is not None, "use ApiClient in `async with`"
        try:
            data = orjson.dumps(request.body)
        except orjson.JSONEncodeError as exc:  # nested past 254 levels, an int past 64 bits
            return Outcome(
                Kind.FAIL, code="invalid_request_body", sent=False,
                message=f"the request body cannot be written as JSON ({exc}); nothing was sent",
            )
        try:
            async with self._session.post(
                self.endpoint.url_for(request),
                data=data,
                allow_redirects=False,
                proxy=self._proxy,
            ) as resp:
                raw = await self._read_capped(resp)
                if raw is None:
                    return self._too_large(resp)
                return classify(resp.status, resp.headers, raw, request.url, self._key)
        except TimeoutError:
            return Outcome(Kind.RETRY, code="timeout", message="no answer within the timeout")
        except aiohttp.ClientPayloadError as exc:
            message = redact(str(exc), self._key)
            return Outcome(Kind.RETRY, code="truncated_response", message=message)
        except aiohttp.ClientError as exc:
            message = redact(f"{type(exc).__name__}: {exc}", self._key)
            return Outcome(Kind.RETRY, code="connection_error", message=message)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes | None:
        """The decoded body, or None once it passes the cap. aiohttp inflates gzip in bounded
        steps as we consume, so stopping here bounds memory even for a compression bomb."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > self._max_response_bytes:
                return None  # leaving `async with` unread closes the connection
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, resp: aiohttp.ClientResponse) -> Outcome:
        # Final: asking again would fetch (and maybe pay for) the same oversized answer.
        limit = f"{self._max_response_bytes / 2**20:g} MB"
        return Outcome(
            Kind.FAIL,
            resp.status,
            request_id=_request_id(resp.headers),
            code="response_too_large",
            message=(
                f"the server's answer (HTTP {resp.status}) is larger than {limit}, the most "
                "batchrun reads of one response; raise it with --max-response-mb if answers "
                "this large are expected"
            ),
        )
