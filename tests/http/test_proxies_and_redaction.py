"""What a hostile review of the HTTP client found: the key or a proxy password reaching a proxy,
a result line or the terminal; loopback traffic sent through a proxy; answers not recorded as
sent; responses whose parsing costs far more memory than their size."""

from __future__ import annotations

import asyncio
import base64
import tracemalloc
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.cli.commands import run
from batchrun.errors import InputError, redact, without_userinfo
from batchrun.http.client import ApiClient, Endpoint, Kind, Outcome, classify, proxy_for
from batchrun.http.endpoint import env_proxy
from batchrun.policy.decide import never_connected
from batchrun.policy.request import CHAT_URL, EMBEDDINGS_URL
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.threaded_server import KEY, REQ, Recorder, ThreadedServer, serve, submit_against

ProxyEnv = Callable[..., None]
MB = 1024 * 1024
REMOTE = "https://api.example.test/v1"  # never resolved: a proxy is always in the way
AZURE = "https://myres.openai.azure.com"


@asynccontextmanager
async def connect_proxy(status: int) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A proxy that logs each request head it gets (the CONNECT) and answers `status`."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(f"HTTP/1.1 {status} Go away\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.2", 0)
    async with server:
        yield f"127.0.0.2:{server.sockets[0].getsockname()[1]}", heads


async def send(endpoint: Endpoint, key: str = KEY, **client_args: Any) -> Outcome:
    async with ApiClient(endpoint, key, 5.0, 10, **client_args) as client:
        return await client.send(REQ)


# -- 1. the key never reaches a proxy ---------------------------------------------------------


@pytest.mark.parametrize("login", ["", "corp:hunter2@"], ids=["no-login", "login"])
@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
async def test_the_connect_request_to_a_proxy_carries_no_key(
    proxy_env: ProxyEnv, azure: bool, login: str
) -> None:
    endpoint = Endpoint.make(None, AZURE, None) if azure else Endpoint.make(REMOTE, None, None)
    async with connect_proxy(403) as (proxy, heads):
        proxy_env(HTTPS_PROXY=f"http://{login}{proxy}")
        out = await send(endpoint)
    [head] = heads
    assert head.startswith(b"CONNECT ")
    assert KEY.encode() not in head and b"api-key" not in head.lower()
    auth = [h for h in head.split(b"\r\n") if h.lower().startswith(b"proxy-authorization")]
    assert auth == ([b"Proxy-Authorization: Basic " + base64.b64encode(b"corp:hunter2")]
                    if login else [])
    assert out.kind is Kind.RETRY and "hunter2" not in out.message


async def test_a_plain_http_proxy_gets_no_proxy_authorization_it_did_not_ask_for(
    proxy_env: ProxyEnv,
) -> None:
    proxy_server = Recorder()
    async with serve(proxy_server.handle, "127.0.0.2") as proxy:
        proxy_env(HTTP_PROXY=proxy)
        out = await send(Endpoint.make("http://api.example.test/v1", None, None, insecure=True))
    assert out.kind is Kind.OK
    [(headers, _)] = proxy_server.got
    assert "Proxy-Authorization" not in headers


# -- 2. loopback is never proxied ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127.0.0.3"])
async def test_loopback_destinations_never_go_through_a_proxy(
    proxy_env: ProxyEnv, host: str
) -> None:
    origin_server, proxy_server = Recorder(), Recorder()
    listen = "127.0.0.1" if host == "localhost" else host
    async with serve(origin_server.handle, listen) as origin, serve(
        proxy_server.handle, "127.0.0.2"
    ) as proxy:
        proxy_env(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy)
        out = await send(Endpoint.make(origin.replace(listen, host) + "/v1", None, None))
    assert out.kind is Kind.OK
    assert proxy_server.got == [] and len(origin_server.got) == 1


@pytest.mark.parametrize("url", [
    "http://127.9.8.7:8000/v1", "http://localhost.:8000/v1", "http://api.localhost/v1",
    "http://[::1]:8000/v1", "http://[::ffff:127.0.0.1]:8000/v1",
])
def test_no_loopback_address_is_proxied(proxy_env: ProxyEnv, url: str) -> None:
    proxy_env(HTTP_PROXY="http://proxy.corp:3128", ALL_PROXY="http://proxy.corp:3128")
    assert proxy_for(url) is None


def test_simulate_never_goes_through_a_proxy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proxy_env: ProxyEnv
) -> None:
    proxy_server = Recorder()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "my confidential prompt"}])
    with ThreadedServer(proxy_server.handle) as proxy:
        proxy_env(HTTP_PROXY=proxy.origin, HTTPS_PROXY=proxy.origin)
        code = run(["submit", str(jobs), "--simulate", "-q"])
    assert code == 0, capsys.readouterr().err
    assert proxy_server.got == []
    assert "via proxy" not in capsys.readouterr().err


# -- 3. proxy credentials never reach a message ------------------------------------------------


async def test_a_proxy_refusal_does_not_write_the_proxy_password(proxy_env: ProxyEnv) -> None:
    async with connect_proxy(407) as (proxy, _):
        proxy_env(HTTPS_PROXY=f"http://corp:hunter2@{proxy}")
        out = await send(Endpoint.make(REMOTE, None, None))
    assert out.kind is Kind.RETRY and "407" in out.message
    assert "hunter2" not in out.message and "corp:" not in out.message


def test_redact_masks_credentials_in_any_url() -> None:
    text = "ClientHttpProxyError: 407, url='http://corp:hunter2@10.0.0.1:3128' and https://u@h/x"
    assert redact(text) == (
        "ClientHttpProxyError: 407, url='http://***@10.0.0.1:3128' and https://***@h/x")


@pytest.mark.parametrize("value", [
    "http://corp:hunter2@127.0.0.2:99999",  # bad port
    "http://corp:hun/ter2@proxy.corp:3128",  # unencoded '/' in the password
    "http://corp:hun#ter2@proxy.corp:3128",
    "socks5://corp:hunter2@proxy.corp:1080",  # a scheme aiohttp cannot use
])
def test_a_malformed_proxy_is_an_input_error_naming_the_variable(
    proxy_env: ProxyEnv, value: str
) -> None:
    proxy_env(HTTPS_PROXY=value)
    with pytest.raises(InputError, match=r"\$HTTPS_PROXY") as caught:
        env_proxy(REMOTE)
    assert "hunter2" not in caught.value.message and "ter2" not in caught.value.message


def test_submit_with_a_malformed_proxy_exits_2_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], proxy_env: ProxyEnv
) -> None:
    proxy_env(OPENAI_API_KEY=KEY, https_proxy="http://corp:hunter2@127.0.0.2:99999")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    code = run(["submit", str(jobs), "--base-url", REMOTE])
    shown = capsys.readouterr()
    assert code == 2 and "$https_proxy" in shown.err
    assert "hunter2" not in shown.out + shown.err
    results = tmp_path / "jobs.results.jsonl"
    assert not results.exists() or results.read_text() == ""


# -- 10. masking a password holding '/', '#', '?' ------------------------------------------------


@pytest.mark.parametrize("password", ["pa/ss", "pa#ss", "pa?ss", "pa@ss", "p/a?s#s"])
def test_without_userinfo_masks_a_password_with_url_delimiters(password: str) -> None:
    shown = without_userinfo(f"http://corp:{password}@proxy.corp:3128")
    assert shown == "http://***@proxy.corp:3128"


# -- 4. a 200 that is not an answer is scrubbed -------------------------------------------------


def test_a_200_echoing_the_request_headers_is_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def echo(request: web.Request) -> web.Response:  # an httpbin-like server
        return web.json_response({"headers": dict(request.headers)})

    code, line = submit_against(echo, KEY, tmp_path, monkeypatch)
    assert code == 1 and line["error"]["code"] == "invalid_response"
    assert KEY not in (tmp_path / "jobs.results.jsonl").read_text()
    assert line["response"]["body"]["headers"]["Authorization"] == "Bearer [redacted]"


# -- 5. request ids and dictionary keys -----------------------------------------------------------


@pytest.mark.parametrize("header", ["x-request-id", "apim-request-id"])
@pytest.mark.parametrize("status", [200, 500])
def test_a_request_id_echoing_the_key_is_redacted(header: str, status: int) -> None:
    raw = orjson.dumps({"choices": []} if status == 200 else {"error": {"message": "x"}})
    out = classify(status, {header: f"Bearer {KEY}"}, raw, CHAT_URL, KEY)
    assert KEY not in out.request_id and "[redacted]" in out.request_id


def test_an_ordinary_request_id_is_kept() -> None:
    for rid in ("req_0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef",
                "8d2a5c3e-1f4b-4c6d-9e8f-0a1b2c3d4e5f"):
        raw = orjson.dumps({"choices": []})
        assert classify(200, {"x-request-id": rid}, raw, CHAT_URL, KEY).request_id == rid


def test_the_key_as_a_dictionary_key_in_an_error_body_is_redacted() -> None:
    raw = orjson.dumps({"error": {"message": "x"}, f"Bearer {KEY}": 1, "n": {KEY: [KEY]}})
    out = classify(400, {}, raw, CHAT_URL, KEY)
    assert KEY not in orjson.dumps(out.body).decode()
    assert out.body["Bearer [redacted]"] == 1 and out.body["n"] == {"[redacted]": ["[redacted]"]}


# -- 6. a text error body is redacted before it is cut -------------------------------------------


@pytest.mark.parametrize("key", [
    "gw_Zq8X7pLm2Rt5Vn9Bc4Hd6Jk1Ws3Ye0Ua",  # a gateway key: nothing key-shaped about it
    "0123456789abcdef0123456789abcdef",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
])
@pytest.mark.parametrize("at", [150, 185, 195, 199])
def test_a_key_in_a_text_error_body_is_not_partly_shown(key: str, at: int) -> None:
    raw = ("x" * at + " key=" + key + " rest of the page " + "y" * 300).encode()
    out = classify(500, {}, raw, CHAT_URL, key)
    assert key[:6] not in out.message and key[-6:] not in out.message
    assert out.message.startswith("HTTP 500: xxx")


def test_an_unknown_token_cut_by_the_snippet_is_dropped_whole() -> None:
    raw = ("x" * 190 + " token=Zq8X7pLm2Rt5Vn9Bc4Hd6Jk1").encode()
    out = classify(502, {}, raw, CHAT_URL, KEY)
    assert "Zq8X" not in out.message and "token" not in out.message
    assert out.message.endswith("…")


# -- 7. no terminal control sequences from a server -----------------------------------------------


def controls(text: str) -> list[str]:
    return [c for c in text if c not in "\n\t" and unicodedata.category(c) in ("Cc", "Cf")]


@pytest.mark.parametrize("status", [400, 401, 429, 500])
def test_server_text_reaches_messages_without_control_characters(status: int) -> None:
    raw = orjson.dumps({"error": {
        "message": "bad key\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;ZWNobyBoaQ==\x07 FAKE: ok\x9b31m"
                   "\r per day \u202eevil",
        "code": "invalid_api_key\x1b[31m"}})
    out = classify(status, {"x-request-id": "req_1\x1b[2J"}, raw, CHAT_URL, KEY)
    assert controls(out.message) == [] and controls(out.code) == []
    assert controls(out.request_id) == []
    assert out.message.startswith("bad key") and "FAKE: ok" in out.message
    text = classify(status, {}, b"oops\x1b]0;pwned\x07 \x1b[31mred", CHAT_URL, KEY).message
    assert controls(text) == [] and "oops" in text


# -- 12. an error message is not stored twice in full ---------------------------------------------


def test_a_long_error_message_is_capped_and_points_at_the_body() -> None:
    message = "A" * 60_000
    out = classify(400, {}, orjson.dumps({"error": {"message": message}}), CHAT_URL, KEY)
    assert len(out.message) < 2_200 and out.message.startswith("A" * 1_000)
    assert "response body" in out.message
    assert out.body["error"]["message"] == message


# -- 9. memory a response can cost when parsed -----------------------------------------------------


async def test_a_body_that_parses_to_a_huge_object_graph_fails_cheaply() -> None:
    n = 8 * MB // 3
    raw = b'{"choices":[' + b"{}," * (n - 1) + b'{}],"usage":{"prompt_tokens":1}}'

    async def many_dicts(request: web.Request) -> web.Response:
        return web.Response(body=raw, content_type="application/json")

    async with serve(many_dicts) as origin:
        endpoint = Endpoint.make(origin + "/v1", None, None)
        tracemalloc.start()
        try:
            out = await send(endpoint, max_response_bytes=9 * MB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert out.kind is Kind.FAIL and out.code == "response_too_large" and out.status == 200
    assert "memory" in out.message and not out.usage_known
    assert peak < 40 * MB  # the body itself, read once; never its 190 MB of dicts


def test_a_big_embeddings_answer_is_still_read() -> None:
    row = b'{"object":"embedding","embedding":[' + b",".join([b"-0.012345"] * 3072) + b"]}"
    raw = b'{"data":[' + b",".join([row] * 2048) + b'],"usage":{"prompt_tokens":9}}'
    assert 55 * MB < len(raw) < 64 * MB
    out = classify(200, {}, raw, EMBEDDINGS_URL, KEY)
    assert out.kind is Kind.OK and len(out.body["data"]) == 2048


# -- 11. a valid answer is recorded as sent ---------------------------------------------------


@pytest.mark.parametrize("value", [
    b"123456789012345678901234567890", b"18446744073709551616", b"1e400", b'"\\ud83d"',
    b'"\\udc00 lone"',
])
def test_a_valid_answer_orjson_refuses_or_rewrites_is_kept_byte_identical(value: bytes) -> None:
    raw = (b'{"choices":[{"message":{"content":"hi"},"x":' + value
           + b'}],"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    out = classify(200, {}, raw, CHAT_URL, KEY)
    assert out.kind is Kind.OK and out.usage == (1, 2)
    assert out.raw_body == raw
    orjson.dumps(out.body)  # still writable by a writer that does not splice raw_body


def test_a_pretty_printed_answer_is_kept_on_one_line() -> None:
    answer = {"choices": [{"message": {"content": "two\nlines"}}], "usage": {"prompt_tokens": 1}}
    raw = b"\xef\xbb\xbf" + orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\r\n"
    out = classify(200, {}, raw, CHAT_URL, KEY)
    assert out.kind is Kind.OK and out.raw_body is not None
    assert b"\n" not in out.raw_body and b"\r" not in out.raw_body
    assert orjson.loads(out.raw_body) == answer


@pytest.mark.parametrize("raw", [
    b'{"choices":[NaN]}', b'{"choices":[{"a":"\xff"}]}',
    '{"choices":[]}'.encode("utf-16"),
])
def test_what_no_strict_json_reader_accepts_is_still_unreadable(raw: bytes) -> None:
    out = classify(200, {}, raw, CHAT_URL, KEY)
    assert out.kind is Kind.RETRY and out.raw_body is None


def test_only_a_valid_answer_carries_raw_bytes() -> None:
    assert classify(400, {}, b'{"error":{"message":"x"}}', CHAT_URL, KEY).raw_body is None
    assert classify(200, {}, b'{"id":"x"}', CHAT_URL, KEY).raw_body is None


# -- 13. NO_PROXY and ALL_PROXY as curl reads them ---------------------------------------------


def test_no_proxy_entries_with_ports_cidr_and_domains(proxy_env: ProxyEnv) -> None:
    proxy_env(HTTPS_PROXY="http://proxy.corp:3128", HTTP_PROXY="http://proxy.corp:3128",
              NO_PROXY="gw.internal:8443, 10.0.0.0/8,fd00::/8 ,.corp.test,example.test,[fe80::1]")
    direct = ["https://gw.internal:8443/v1", "http://10.1.2.3:8000/v1", "http://[fd00::5]/v1",
              "https://llm.corp.test/v1", "https://corp.test/v1", "https://example.test/v1",
              "https://a.b.example.test/v1", "http://[fe80::1]:80/v1"]
    proxied = ["https://gw.internal/v1", "https://gw.internal:9443/v1", "http://11.0.0.1/v1",
               "https://notexample.test/v1", "https://example.test.evil/v1", "http://[fe80::2]/v1"]
    assert [u for u in direct if proxy_for(u) is not None] == []
    assert [u for u in proxied if proxy_for(u) != "http://proxy.corp:3128"] == []


def test_no_proxy_star_disables_every_proxy(proxy_env: ProxyEnv) -> None:
    proxy_env(HTTPS_PROXY="http://proxy.corp:3128", no_proxy="*")
    assert proxy_for(REMOTE) is None


def test_all_proxy_is_used_when_no_scheme_proxy_is_set(proxy_env: ProxyEnv) -> None:
    proxy_env(ALL_PROXY="http://corp:pw@all.corp:3128")
    assert proxy_for(REMOTE) == "http://***@all.corp:3128"
    proxy_env(HTTPS_PROXY="http://https.corp:3128")
    assert proxy_for(REMOTE) == "http://https.corp:3128"
    proxy_env(NO_PROXY="api.example.test")
    assert proxy_for(REMOTE) is None


async def test_all_proxy_carries_requests(proxy_env: ProxyEnv) -> None:
    proxy_server = Recorder()
    async with serve(proxy_server.handle, "127.0.0.2") as proxy:
        proxy_env(all_proxy=proxy)
        out = await send(Endpoint.make("http://api.example.test/v1", None, None, insecure=True))
    assert out.kind is Kind.OK and len(proxy_server.got) == 1


def test_result_line_of_a_submit_with_a_cut_key_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "gw_Zq8X7pLm2Rt5Vn9Bc4Hd6Jk1Ws3Ye0Ua"  # a gateway's key: nothing key-shaped about it

    async def text_500(request: web.Request) -> web.Response:
        echoed = request.headers["Authorization"].removeprefix("Bearer ")
        return web.Response(status=500, text="x" * 185 + " " + echoed + " and more")

    code, line = submit_against(text_500, key, tmp_path, monkeypatch)
    written = (tmp_path / "jobs.results.jsonl").read_text()
    assert code == 1 and key[:8] not in written and line["error"]["code"] == "http_500"
    assert read_results(tmp_path / "jobs.results.jsonl")["a"]["response"]["status_code"] == 500


@pytest.mark.parametrize("status", [403, 407, 502])
async def test_a_proxy_refusing_the_connect_sent_nothing_to_the_api(
        proxy_env: ProxyEnv, status: int) -> None:
    # The proxy's refusal of the tunnel was taken as a request that reached the API: each
    # attempt was counted billed at its reservation, and a wrong proxy password ended the job
    # with every request failed (exit 1) instead of "Cannot reach …: check the proxy settings".
    async with connect_proxy(status) as (proxy, heads):
        proxy_env(HTTPS_PROXY=f"http://corp:hunter2@{proxy}")
        out = await send(Endpoint.make(REMOTE, None, None))
    assert len(heads) == 1 and heads[0].startswith(b"CONNECT ")
    assert out.code == "connection_error" and not out.sent
    assert never_connected(out)
