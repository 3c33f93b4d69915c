"""The Files and Batches HTTP API (OpenAI's `/v1/files`, `/v1/batches`; Azure OpenAI's
`/openai/files`, `/openai/batches` with `api-version`), on the same `Endpoint` as the sync path:
the key in a header of each request (never a session default), redirects never followed, the
proxy from the environment, and no credential in any message.

Every call answered with a 2xx (Azure's uploads and creates answer 201 Created) returns the
API's JSON object; any other answer raises:
`ApiRefused` (a refused key or account: stop, exit 4), `Transient` (5xx, 408/409/429,
timeouts, dropped connections: the caller retries), or `ApiCallFailed` (any other 4xx: the
request itself is wrong, asking again cannot help).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from batchrun.errors import ApiCallFailed as ApiCallFailed  # its callers import it from here
from batchrun.errors import ApiRefused, StateError, printable, redact
from batchrun.files.fsutil import PRIVATE_FILE
from batchrun.http.endpoint import Endpoint, env_proxy, proxy_secrets
from batchrun.policy.classify import (
    Kind,
    capped,
    error_fields,
    is_redirect,
    is_success,
    secret_forms,
    status_kind,
)

# The API's answers are small JSON objects; only file contents are large, and those are
# streamed to disk, never held whole.
MAX_JSON_BYTES = 16 * 1024 * 1024
CHUNK = 1 << 20


class Transient(Exception):
    """A failure that asking again may cure. Control flow, outside the error tree: every
    caller retries it and, once its retries are spent, raises a StateError that says so."""

    def __init__(self, message: str, sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.sent = sent  # False: the request never reached the server


class BatchClient:
    """One session for a job's files and batches calls; use in `async with`."""

    def __init__(self, endpoint: Endpoint, api_key: str, timeout_s: float = 600.0) -> None:
        self.endpoint = endpoint
        self._proxy = env_proxy(endpoint.base_url)
        self._secrets = secret_forms(api_key, *proxy_secrets(self._proxy))
        self._auth = endpoint.auth_headers(api_key)
        # A 200 MB upload or download may take longer than any one request should: what is
        # bounded is a stall (no byte for timeout_s), not the transfer.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout_s, 60.0),
                                              sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BatchClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- where things are -----------------------------------------------------------------------

    @property
    def line_url(self) -> str:
        """What the `url` of an uploaded chat line must be (Azure: without /v1)."""
        return "/chat/completions" if self.endpoint.azure else "/v1/chat/completions"

    def batch_endpoint(self, url: str) -> str:
        """The `endpoint` a batch of lines with our `url` is created with."""
        return url.removeprefix("/v1") if self.endpoint.azure else url

    def _url(self, path: str, **query: str) -> str:
        if self.endpoint.azure:
            query = {"api-version": self.endpoint.api_version, **query}
            base = f"{self.endpoint.base_url}/openai{path}"
        else:
            base = self.endpoint.base_url + path
        return f"{base}?{urlencode(query)}" if query else base

    # -- calls ----------------------------------------------------------------------------------

    async def upload(self, path: Path, name: str) -> dict[str, Any]:
        """POST /files, multipart, purpose "batch"; streams the file from disk."""
        with path.open("rb") as f:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", f, filename=name, content_type="application/jsonl")
            return await self._json("POST", self._url("/files"), data=form)

    async def create(self, input_file_id: str, endpoint: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        body = {"input_file_id": input_file_id, "endpoint": endpoint,
                "completion_window": "24h", "metadata": metadata}
        return await self._json("POST", self._url("/batches"), json_body=body)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", self._url(f"/batches/{quote(batch_id, safe='')}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._json("POST",
                                self._url(f"/batches/{quote(batch_id, safe='')}/cancel"))

    async def batches(self, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every batch of the account, newest first, page by page (`after` = last id). Each
        once: a page that brings no batch not seen yet ends the list, since a server whose
        `after` leads back to a page already read would otherwise be listed for ever."""
        after: str | None = None
        seen: set[str] = set()
        while True:
            query = {"limit": str(page_size), **({"after": after} if after else {})}
            page = await self._json("GET", self._url("/batches", **query))
            data = page.get("data")
            if not isinstance(data, list):
                return
            new = 0
            for batch in data:
                bid = batch.get("id") if isinstance(batch, dict) else None
                if isinstance(batch, dict) and isinstance(bid, str) and bid not in seen:
                    seen.add(bid)
                    new += 1
                    yield batch
            if not page.get("has_more") or not new:
                return
            last = data[-1].get("id") if isinstance(data[-1], dict) else None
            if not isinstance(last, str) or last == after:
                return
            after = last

    async def download(self, file_id: str, dest: Path) -> None:
        """GET /files/{id}/content into `dest` (replaced whole), streamed."""
        session = self._require()
        url = self._url(f"/files/{quote(file_id, safe='')}/content")
        try:
            async with session.get(url, headers=self._auth, allow_redirects=False,
                                   proxy=self._proxy) as resp:
                if not is_success(resp.status):
                    self._raise(resp.status, await self._read(resp, MAX_JSON_BYTES))
                tmp = dest.with_name(dest.name + ".part")
                with _private(tmp) as f:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        f.write(chunk)
                tmp.replace(dest)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transient(exc) from None
        except OSError as exc:  # the disk's, not the API's: asking again cannot help
            raise StateError(f"cannot write the downloaded {dest}: {exc.strerror}. The batch's "
                             "results stay on the server until its files expire") from None

    # -- plumbing -------------------------------------------------------------------------------

    def _require(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use BatchClient in `async with`"
        return self._session

    async def _json(self, method: str, url: str, data: Any = None,
                    json_body: dict[str, Any] | None = None) -> dict[str, Any]:
        session = self._require()
        headers = dict(self._auth)
        if json_body is not None:
            data = orjson.dumps(json_body)
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(method, url, data=data, headers=headers,
                                       allow_redirects=False, proxy=self._proxy) as resp:
                raw = await self._read(resp, MAX_JSON_BYTES)
                if not is_success(resp.status):
                    self._raise(resp.status, raw)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transient(exc) from None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Transient(f"unparseable answer to {method} {self._where(url)}") from None
        if not isinstance(parsed, dict):
            raise Transient(f"answer to {method} {self._where(url)} is not a JSON object")
        return parsed

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, cap: int) -> bytes:
        chunks, size = [], 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _where(self, url: str) -> str:
        return url.removeprefix(self.endpoint.base_url).partition("?")[0]

    def _said(self, text: str) -> str:
        return printable(capped(redact(text, *self._secrets), 500))

    def _transient(self, exc: BaseException) -> Transient:
        if isinstance(exc, TimeoutError):
            return Transient("no answer within the timeout")
        reached = not isinstance(exc, aiohttp.ClientConnectorError)
        return Transient(self._said(f"{type(exc).__name__}: {exc}"), sent=reached)

    def _raise(self, status: int, raw: bytes) -> None:
        code, etype, message = _error_of(raw)
        said = self._said(message or raw[:200].decode("utf-8", "replace")) or f"HTTP {status}"
        kind = status_kind(status, code, etype)
        if kind is Kind.REFUSED:
            raise ApiRefused(
                f"The API refused the key or the account: {said} ({code or 'no code'}, HTTP "
                f"{status}). Check ${self.endpoint.key_env}, the account's billing and quota.")
        if kind in (Kind.RETRY, Kind.RATE_MINUTE):
            raise Transient(f"HTTP {status}: {said}")
        if is_redirect(status):
            said = "a redirect, which batchrun never follows; check the base URL"
        raise ApiCallFailed(f"HTTP {status}: {said}", status, code)


def _private(path: Path) -> BinaryIO:
    """`path` opened for writing, readable by its owner only: it holds a batch's answers."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)  # a file left by an earlier try keeps its mode otherwise
    return os.fdopen(fd, "wb")


def _error_of(raw: bytes) -> tuple[str, str, str]:
    """(code, type, message) of an error answer's body; empty strings if it has none."""
    try:
        return error_fields(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return "", "", ""
