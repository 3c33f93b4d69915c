"""HTTP to an OpenAI-compatible API: the run's one session, which sends a request and hands the
response to `batchrun.policy.classify`. Where requests go and how they authenticate is
`batchrun.http.endpoint`; both are re-exported here.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp
import orjson

from batchrun.errors import printable, redact, without_userinfo
from batchrun.http.endpoint import (
    AZURE_API_VERSION,
    OPENAI_BASE_URL,
    Endpoint,
    env_proxy,
    proxy_for,
    proxy_secrets,
)
from batchrun.policy.classify import (
    DEFAULT_MAX_PARSE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_REPORTED_TOKENS,
    PARSE_COST_FACTOR,
    Kind,
    Outcome,
    capped,
    classify,
    parse_cost,
    parse_duration,
    reported_usage,
    retry_hint,
    safe_request_id,
    secret_forms,
    server_state,
)
from batchrun.policy.request import Request

__all__ = [
    "AZURE_API_VERSION",
    "DEFAULT_MAX_PARSE_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_MESSAGE_CHARS",
    "MAX_REPORTED_TOKENS",
    "OPENAI_BASE_URL",
    "ApiClient",
    "Endpoint",
    "Kind",
    "Outcome",
    "classify",
    "parse_cost",
    "parse_duration",
    "proxy_for",
    "reported_usage",
    "retry_hint",
    "server_state",
    "without_userinfo",
]


class ApiClient:
    """The run's one HTTP session: keep-alive, a per-request timeout, the key in a header of
    each request (never a session default: aiohttp copies those into a proxy's CONNECT)."""

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
        # Never below the default cap: a small --max-response-mb limits size, not structure.
        self._max_parse_bytes = max(PARSE_COST_FACTOR * max_response_bytes,
                                    DEFAULT_MAX_RESPONSE_BYTES)
        # Resolved once, not by aiohttp's trust_env: that also reads ~/.netrc and adds its
        # password as Basic auth beside our key (a ValueError on every request to OpenAI).
        self._proxy = env_proxy(endpoint.base_url)
        self._key = api_key
        self._secrets = secret_forms(api_key, *proxy_secrets(self._proxy))
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._headers = {**endpoint.auth_headers(api_key), "Content-Type": "application/json"}

    async def __aenter__(self) -> ApiClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
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
                headers=self._headers,
                allow_redirects=False,
                proxy=self._proxy,
            ) as resp:
                raw = await self._read_capped(resp)
                if raw is None:
                    return self._too_large(resp)
                return classify(resp.status, resp.headers, raw, request.url, self._secrets,
                                self._max_parse_bytes)
        except TimeoutError:
            return Outcome(Kind.RETRY, code="timeout", message="no answer within the timeout")
        except aiohttp.ClientPayloadError as exc:
            return Outcome(Kind.RETRY, code="truncated_response", message=self._said(str(exc)))
        except aiohttp.ClientError as exc:
            # The text may quote the proxy's URL with its password, or a proxy's reason phrase.
            message = self._said(f"{type(exc).__name__}: {exc}")
            # No connection was made (refused, no route, DNS), or the proxy refused the tunnel
            # (CONNECT answered 403/407/502): the request never reached the API, so it cannot
            # have been billed. A reset on a connection that was open can.
            reached = not isinstance(exc, (aiohttp.ClientConnectorError,
                                           aiohttp.ClientHttpProxyError))
            return Outcome(Kind.RETRY, code="connection_error", message=message, sent=reached)

    def _said(self, text: str) -> str:
        return printable(capped(redact(text, *self._secrets), 500))

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
            request_id=safe_request_id(resp.headers, self._secrets),
            code="response_too_large",
            message=(
                f"the server's answer (HTTP {resp.status}) is larger than {limit}, the most "
                "batchrun reads of one response; raise it with --max-response-mb if answers "
                "this large are expected"
            ),
        )
