"""What a response means: `classify` is the table in docs/design.md, as a pure function of status,
headers and body, with everything it needs to read a hostile or broken server safely (usage
clamped, secrets scrubbed from error text, parse cost bounded, answers kept byte for byte).
`batchrun.http.client` sends; this module only reads.
"""

from __future__ import annotations

import codecs
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from batchrun.errors import printable, redact, without_userinfo
from batchrun.pacing.limiter import ServerState
from batchrun.policy.request import EMBEDDINGS_URL

# Far above any real answer (a 128K-token completion is well under 1 MB; 2,048 embeddings of
# 3,072 dimensions ~60 MB), low enough that a broken or hostile server (a decompression bomb)
# cannot take the machine's memory. --max-response-mb's default; a bigger answer fails its request.
DEFAULT_MAX_RESPONSE_MB = 64.0
DEFAULT_MAX_RESPONSE_BYTES = int(DEFAULT_MAX_RESPONSE_MB * 1024 * 1024)
# Parsed, a body costs several times its size (a float 32 bytes for its ~10 characters, an empty
# dict 72 bytes for its 3). A big embeddings answer (2048 inputs x 3072 floats, 60 MB) costs about
# 200 MB; 63 MB of `{},` would cost 2 GB. Bodies estimated past this are refused unparsed.
PARSE_COST_FACTOR = 8
DEFAULT_MAX_PARSE_BYTES = PARSE_COST_FACTOR * DEFAULT_MAX_RESPONSE_BYTES
# An error message is stored twice (in the body and in error.message): the second copy is capped.
MAX_MESSAGE_CHARS = 2_000
_MAX_CODE_CHARS = 200
_MAX_ID_CHARS = 200
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


# The error code of the server's "Request too large": a 429 that fails the request for good.
TOO_LARGE_CODE = "request_too_large"


class Kind(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # 5xx, timeouts, dropped connections, unparseable bodies
    RATE_MINUTE = "rate_minute"  # retry after the hint; not a failure
    RATE_DAY = "rate_day"  # today's budget is spent: pause the job
    REFUSED = "refused"  # bad key, no quota: stop the job
    FAIL = "fail"  # other 4xx: record at once
    # flex processing has no capacity now (OpenAI's 429 "Resource Unavailable", Groq's 498
    # capacity_exceeded): not billed, not a rate limit; wait and ask again
    FLEX_UNAVAILABLE = "flex_unavailable"


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
    # "... tokens per min (TPM): ... Requested R": what the server charged (would have charged)
    # this very request against its token limit, the exact evidence of its accounting.
    server_requested_tokens: int | None = None
    # A valid answer exactly as the server sent it (on one line: without a BOM, surrounding
    # blanks or line breaks, which in strict JSON can only sit between tokens), for the writer to
    # record byte for byte. `body` is its parsed form, which may differ: ints past 64 bits become
    # floats, lone surrogates U+FFFD, 1e400 inf.
    raw_body: bytes | None = None
    # What `_reported` found, worked out once: the engine, the limiter, the ledger, the spend
    # cap and every listener ask an answer's usage, about ten times a request.
    _usage_memo: tuple[int, int] | None = field(
        default=None, init=False, repr=False, compare=False)
    _usage_read: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens the server billed as far as we know; (0, 0) when unknown:
        check `usage_known` before settling a reservation with it."""
        return self._reported() or (0, 0)

    @property
    def cached_in(self) -> int:
        """Prompt tokens the server served from its prompt cache (billed at the cached price);
        0 for an error or a server that does not say."""
        if self.status is None or not is_success(self.status):
            return 0
        return reported_cached(self.body)

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
        if is_success(self.status):
            return self._reported() is not None
        return self.status < 500 and self.status != 408

    def _reported(self) -> tuple[int, int] | None:
        if self.status is None or not is_success(self.status):
            return None
        if not self._usage_read:  # an Outcome's status and body are set once, when it is made
            self._usage_memo, self._usage_read = reported_usage(self.body), True
        return self._usage_memo


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
        total = usage.get("total_tokens")
        if fields[1] is None and total is not None:
            # A server that gives only the total still billed its completion: the rest of it.
            completion = max(0, _token_count(total) - prompt)
    except ValueError:
        return None
    return prompt, completion


def reported_cached(body: Any) -> int:
    """`usage.prompt_tokens_details.cached_tokens` of a 2xx body, never more than its
    prompt_tokens; 0 when absent, null or not a count (many servers, and embeddings, have none)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    reported = reported_usage(body)
    if cached is None or reported is None:
        return 0
    try:
        return min(_token_count(cached), reported[0])
    except ValueError:
        return 0


_NUM = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUM}h)?(?:{_NUM}m(?!s))?(?:{_NUM}s)?(?:{_NUM}ms)?")
_LIMIT = re.compile(r"Limit:?\s*(\d[\d,]*)")
_REQUESTED = re.compile(r"Requested:?\s*(\d[\d,]*)")
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


def is_success(status: int) -> bool:
    """Every 2xx is an answer: Azure answers 201 Created to Files - Upload and Batch - Create
    (SERVERS.md), and a gateway may say 201 or 202 for a completion too."""
    return 200 <= status < 300


def is_redirect(status: int) -> bool:
    return 300 <= status < 400


def status_kind(status: int, code: str = "", etype: str = "") -> Kind:
    """What an HTTP status (with the error's code and type) says, the one reading of it for
    every caller: a sync request's answer (`classify`, which also reads the body), a files or
    batches call (batch.api) and a line of a batch's results (batch.collect). A 429 is
    RATE_MINUTE here; only `classify` can tell a daily limit or a request too large by its
    message. Redirects are FAIL: batchrun never follows one."""
    if is_success(status):
        return Kind.OK
    if code in REFUSAL_CODES or etype in REFUSAL_CODES or status in (401, 402, 403):
        return Kind.REFUSED
    if status == 429:
        return Kind.RATE_MINUTE
    if status in (408, 409) or status >= 500:
        return Kind.RETRY
    return Kind.FAIL


# Groq's flex tier says "no capacity" with this status of its own (SERVERS.md).
GROQ_CAPACITY_STATUS = 498


_WORD_SEPARATORS = re.compile(r"[\s_-]+")


def _words(text: str) -> str:
    """Text as lowercase words: RESOURCE_UNAVAILABLE, resource-unavailable and Resource
    Unavailable all read "resource unavailable" (gateways re-case and re-join error codes)."""
    return " ".join(_WORD_SEPARATORS.split(text.lower())).strip()


def flex_unavailable(status: int, code: str, etype: str, message: str) -> bool:
    """Flex processing's "no capacity now": OpenAI answers 429 Resource Unavailable (its guide
    names it so and prints no body: the words are what we match), Groq 498 capacity_exceeded.
    A 498 that names another error is that error: the status is no standard one (gateways send
    it for an invalid token), and waiting out capacity would only hide it."""
    fields = (_words(code), _words(etype))
    if "capacity exceeded" in fields:
        return True
    if status == GROQ_CAPACITY_STATUS:
        return not (code or etype)
    return status == 429 and ("resource unavailable" in fields
                              or "resource unavailable" in _words(message))


def error_fields(body: Any) -> tuple[str, str, str]:
    """(code, type, message) of an OpenAI error body, or empty strings."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", "", ""
    return str(err.get("code") or ""), str(err.get("type") or ""), str(err.get("message") or "")


def scrub(value: Any, secrets: Sequence[str]) -> Any:
    """A body that is not an answer with the key and anything key-shaped redacted, in keys too."""
    if isinstance(value, str):
        return redact(value, *secrets)
    if isinstance(value, dict):
        return {redact(k, *secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    return value


def parse_cost(raw: bytes) -> int:
    """About how many bytes of memory parsing `raw` takes: CPython's size for what each
    structural character makes (a dict per '{', a list per '[', an entry per ':', a number and a
    pointer per ',', a str per pair of quotes). One fast pass per character; brackets inside
    strings are counted too, so text full of them is overestimated, never the shapes that cost."""
    return (len(raw) + 64 * raw.count(b"{") + 56 * raw.count(b"[") + 40 * raw.count(b":")
            + 32 * raw.count(b",") + 25 * raw.count(b'"'))


def _refuse(constant: str) -> None:
    raise ValueError(constant)  # NaN, Infinity: not JSON, and no reader of ours could take them


_SURROGATE = re.compile("[\ud800-\udfff]")


def _writable(value: Any, depth: int = 0) -> Any:
    """What the stdlib reader made, in a form orjson can write (see Outcome.raw_body)."""
    if depth >= _MAX_DEPTH:
        raise ValueError("too deep")
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, bool) or not isinstance(value, int | dict | list):
        return value
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return value
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, dict):
        return {_writable(k, depth + 1): _writable(v, depth + 1) for k, v in value.items()}
    return [_writable(v, depth + 1) for v in value]


def _parse(raw: bytes) -> Any:
    """The JSON body; None if it is not strict UTF-8 JSON or too deeply nested to write back
    out. orjson first; what it refuses but JSON allows (1e400, an escaped lone surrogate) is
    read by the stdlib."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    if not raw:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            return _writable(json.loads(raw.decode("utf-8"), parse_constant=_refuse))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
    # Counting brackets is cheap and bounds the depth; only a body with that many pays for the
    # real check. Real answers are a few levels deep.
    if raw.count(b"[") + raw.count(b"{") >= _MAX_DEPTH:
        try:
            orjson.dumps(body)
        except orjson.JSONEncodeError:
            return None
    return body


def _one_line(raw: bytes) -> bytes:
    """A valid answer's bytes as one line. Strict JSON holds CR and LF only between tokens
    (inside strings they must be escaped), so dropping them changes no value."""
    raw = raw.removeprefix(codecs.BOM_UTF8).strip()
    return raw.translate(None, b"\r\n") if b"\n" in raw or b"\r" in raw else raw


# A run of characters a key could be made of: a cut inside one could show part of a key.
_TOKEN_TAIL = re.compile(r"[\w\-.+/=~:%]+\Z")
_LONGEST_PARTIAL = 64  # more than any key-shaped prefix `redact` can miss
_SNIPPET_WINDOW = 4096
_SNIPPET_CHARS = 200


def _drop_partial(text: str, secrets: Sequence[str]) -> str:
    """`text`, just cut, without what might be the start of a key: the cut word (up to
    _LONGEST_PARTIAL characters of it) and any start of a known secret."""
    tail = _TOKEN_TAIL.search(text)
    if tail:
        text = text[: len(text) - min(len(tail.group()), _LONGEST_PARTIAL)]
    for secret in secrets:
        for k in range(min(len(secret), len(text)), 3, -1):
            if text.endswith(secret[:k]):
                text = text[:-k]
                break
    return text


def _snippet(raw: bytes, secrets: Sequence[str]) -> str:
    """The start of a body that is not JSON, for a message: redacted, then cut, so a cut never
    splits a key before redaction could see it whole."""
    text = raw[:_SNIPPET_WINDOW].decode("utf-8", "replace")
    if len(raw) > _SNIPPET_WINDOW:
        text = _drop_partial(text, secrets)
    text = redact(printable(text), *secrets).strip()
    if len(text) > _SNIPPET_CHARS:
        text = _drop_partial(text[:_SNIPPET_CHARS], secrets).rstrip() + "…"
    return text


def capped(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    if len(message) <= limit:
        return message
    kept = _drop_partial(message[:limit], ()).rstrip()
    return (f"{kept}… ({len(message) - len(kept):,} more characters; the full text is in the "
            "response body)")


def safe_request_id(headers: Mapping[str, str], secrets: Sequence[str]) -> str:
    # Gateways echo what they like here; 32-hex-digit ids (vLLM's) are ids, not keys.
    rid = headers.get("x-request-id") or headers.get("apim-request-id") or ""
    return printable(redact(rid, *secrets, hex_keys=False))[:_MAX_ID_CHARS]


def _too_costly(status: int, request_id: str, size: int, cost: int, limit: int) -> Outcome:
    # Final, as for a body past the size cap: asking again would fetch the same answer.
    return Outcome(
        Kind.FAIL, status, request_id=request_id, code="response_too_large",
        message=(
            f"the server's answer (HTTP {status}, {size / 2**20:.1f} MB) would take about "
            f"{cost / 2**20:,.0f} MB of memory to read, more than the {limit / 2**20:,.0f} MB "
            f"batchrun allows one response ({PARSE_COST_FACTOR}x the --max-response-mb cap); "
            "raise the cap if answers like this are expected"
        ),
    )


def classify(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    url: str,
    secret: str | Sequence[str],
    max_parse_bytes: int = DEFAULT_MAX_PARSE_BYTES,
) -> Outcome:
    """Decide what a response means. Pure: no I/O. `secret`: the key, or every form of every
    credential that must never be written (see ApiClient)."""
    secrets = (secret,) if isinstance(secret, str) else tuple(secret)
    request_id = safe_request_id(headers, secrets)
    if len(raw) * 100 > max_parse_bytes:  # smaller bodies cannot cost that much
        cost = parse_cost(raw)
        if cost > max_parse_bytes:
            return _too_costly(status, request_id, len(raw), cost, max_parse_bytes)
    body = _parse(raw)
    state = server_state(headers)
    if is_success(status):
        want = "data" if url == EMBEDDINGS_URL else "choices"
        if isinstance(body, dict) and isinstance(body.get(want), list):
            # A model's answer is the user's data and is never rewritten: a model cannot read
            # the request's headers, so an answer quoting the key is the user's own doing.
            return Outcome(Kind.OK, status, body, request_id, state, raw_body=_one_line(raw))
    # Anything else is the server's words about our request and may quote the key or echo our
    # headers (an httpbin-like 200 too).
    body = scrub(body, secrets)
    out = Outcome(Kind.OK, status, body, request_id, state)
    if is_success(status):
        out.kind, out.code = Kind.RETRY, "invalid_response"
        out.message = f"the server answered {status} without {want!r} (truncated or not JSON)"
        return out
    if is_redirect(status):
        # Following would carry the key (aiohttp keeps `api-key` across hosts) and the prompt to
        # wherever the server pointed, and accept that host's answer as the result.
        location = headers.get("location", "")
        where = capped(printable(redact(without_userinfo(location), *secrets)), 500)
        out.kind, out.code = Kind.FAIL, "redirected"
        out.message = (
            f"the server answered HTTP {status}, redirecting to {where or 'nowhere'}; batchrun "
            "does not follow redirects. If that is the API's real address, give it as "
            "--base-url (or --azure-endpoint)."
        )
        return out
    code, etype, message = error_fields(body)
    message = printable(capped(redact(message, *secrets)))
    if not message:
        snippet = _snippet(raw, secrets)
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    out.code = printable(code or etype or f"http_{status}")[:_MAX_CODE_CHARS]
    out.message = message
    out.kind = status_kind(status, code, etype)
    if out.kind is not Kind.REFUSED and flex_unavailable(status, code, etype, message):
        out.kind, out.code = Kind.FLEX_UNAVAILABLE, "flex_unavailable"
        out.hint_s = retry_hint(headers, message)
    elif out.kind is Kind.RATE_MINUTE and message.lower().startswith("request too large"):
        # Final: asking again cannot make it fit (docs/design.md: one over the limit fails fast).
        out.kind, out.code = Kind.FAIL, TOO_LARGE_CODE
        limit = _LIMIT.search(message)
        if limit and ("per min" in message or "(TPM)" in message):
            out.server_limit_tokens = int(limit.group(1).replace(",", ""))
        out.server_requested_tokens = _requested_tokens(message)
    elif out.kind is Kind.RATE_MINUTE:
        daily = "per day" in message or "(TPD)" in message or "(RPD)" in message
        out.kind = Kind.RATE_DAY if daily else Kind.RATE_MINUTE
        out.hint_s = retry_hint(headers, message)
        out.server_requested_tokens = _requested_tokens(message)
    return out


def _requested_tokens(message: str) -> int | None:
    """The "Requested R" of a refusal about tokens (not requests) per minute, if it has one."""
    if "tokens per min" not in message and "(TPM)" not in message:
        return None
    found = _REQUESTED.search(message)
    return int(found.group(1).replace(",", "")) if found else None


def secret_forms(*secrets: str) -> tuple[str, ...]:
    """Each secret as a message could quote it: as is, percent-encoded, JSON-escaped."""
    forms = {f for s in secrets for f in (s, quote(s, safe=""), orjson.dumps(s).decode()[1:-1])}
    return tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial replacement
