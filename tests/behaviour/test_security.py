"""The client never sends the key or a prompt where the user did not point it, never echoes a
credential, and never lets one response exhaust memory."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.cli.commands import run
from batchrun.errors import InputError, redact
from batchrun.http.client import ApiClient, Endpoint, Kind, Outcome, classify, proxy_for
from batchrun.policy.request import CHAT_URL
from tests.helpers.cli import run_cli
from tests.helpers.jsonl import write_jsonl
from tests.helpers.sim import RunningSim
from tests.helpers.threaded_server import (
    CHAT_OK,
    KEY,
    REQ,
    Recorder,
    endpoint_for,
    serve,
    submit_against,
)

# -- 11.1 redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_to_another_host_is_not_followed(azure: bool, status: int) -> None:
    elsewhere = Recorder()
    async with serve(elsewhere.handle, "127.0.0.2") as other:
        target = other.replace("http://", "http://user:hunter2pw@")

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": target + request.path_qs})

        async with serve(redirect) as origin, ApiClient(
            endpoint_for(origin, azure), KEY, 5.0, 10
        ) as client:
            out = await client.send(REQ)
    assert elsewhere.got == []  # neither the key nor the prompt left for the other host
    assert out.kind is Kind.FAIL and out.code == "redirected" and out.status == status
    assert other.removeprefix("http://") in out.message
    assert "hunter2pw" not in out.message and KEY not in out.message


# -- 11.2 credentials and other unusable URLs -------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://user:hunter2pw@127.0.0.1:8000/v1",
    "https://hunter2pw@api.example.com/v1",
    "http://user:hunter2pw@api.example.com/v1",  # plain http to a remote host: still not echoed
    "ftp://user:hunter2pw@example.com/v1",  # not http: still not echoed
])
@pytest.mark.parametrize("azure", [False, True], ids=["base-url", "azure"])
def test_credentials_in_a_url_are_refused_without_echoing_them(url: str, azure: bool) -> None:
    with pytest.raises(InputError) as caught:
        Endpoint.make(None, url, None) if azure else Endpoint.make(url, None, None)
    message = caught.value.message
    assert "hunter2pw" not in message
    if url.startswith("http"):
        assert "--api-key-env" in message


def test_submit_with_a_key_in_the_base_url_exits_2_and_prints_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    code = run(["submit", str(jobs), "--base-url", f"http://user:{KEY}@127.0.0.1:9/v1"])
    shown = capsys.readouterr()
    assert code == 2
    assert KEY not in shown.out + shown.err and "--api-key-env" in shown.err
    assert not (tmp_path / "jobs.results.jsonl").exists()


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:99999/v1", "port"),
    ("http://127.0.0.1:http/v1", "port"),
    ("http://[::1/v1", "not a valid URL"),
    ("http://127.0.0.1:8000/v1?x=1", "query"),
    ("http://127.0.0.1:8000/v1#top", "query"),
    ("http://127.0.0.1:8000/v 1", "space"),
    ("http://127.0.0.1:8000/\nv1", "space"),
])
def test_unusable_urls_are_input_errors(url: str, says: str) -> None:
    with pytest.raises(InputError, match=says):
        Endpoint.make(url, None, None)


def test_plain_http_in_capitals_to_a_remote_host_still_needs_insecure() -> None:
    with pytest.raises(InputError, match="--insecure"):
        Endpoint.make("HTTP://api.example.com/v1", None, None)


def test_surrounding_blanks_in_a_url_are_ignored() -> None:
    assert Endpoint.make(" http://127.0.0.1:8000/v1/ ", None, None).base_url == (
        "http://127.0.0.1:8000/v1")


# -- 10.3 keys no HTTP header can carry ------------------------------------------------------


@pytest.mark.parametrize("key", [
    "sk-first-half-0000\nsk-second-half-1111",  # two keys pasted into one variable
    "sk-first-half-0000\rsecond",
    "sk-first-half-0000\tsecond",
    "sk-first-half-0000\x1bsecond",
    "sk-first-half-0000…",  # a copy that picked up a typographic ellipsis
])
def test_a_key_with_control_or_non_ascii_characters_is_refused_without_printing_it(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("MY_KEY", key)
    with pytest.raises(InputError, match=r"\$MY_KEY") as caught:
        Endpoint.make(None, None, "MY_KEY").api_key()
    assert "first-half" not in caught.value.message and "second" not in caught.value.message


# -- 11.3 redaction touches only what can hold a key -----------------------------------------


# What the issue saw: with key "a", "chat.completion" came back as "ch[redacted]t.completion".
ANSWER = orjson.dumps({
    "object": "chat.completion", "model": "test-model",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "a test: EMPTY ollama says hi"}}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 7},
})


@pytest.mark.parametrize("key", ["a", "EMPTY", "ollama", "test", "sk-abc"])
def test_short_placeholder_keys_leave_an_answer_byte_identical(key: str) -> None:
    out = classify(200, {}, ANSWER, CHAT_URL, key)
    assert out.kind is Kind.OK and orjson.dumps(out.body) == ANSWER


def test_a_successful_answer_is_never_rewritten_even_if_it_quotes_the_key() -> None:
    answer = orjson.dumps({"choices": [{"message": {"content": f"you said {KEY}"}}]})
    assert orjson.dumps(classify(200, {}, answer, CHAT_URL, KEY).body) == answer


def test_an_answer_is_recorded_byte_identical_with_a_placeholder_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    code, line = submit_against(answer, "EMPTY", tmp_path, monkeypatch)
    assert code == 0 and orjson.dumps(line["response"]["body"]) == ANSWER


def test_a_key_quoted_in_a_400_error_body_is_redacted_in_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        # Some servers echo the request's headers back when they reject it.
        return web.json_response(status=400, data={
            "error": {"message": f"bad request from key {KEY}", "type": "invalid_request_error"},
            "echo": {"authorization": request.headers["Authorization"]}})

    code, line = submit_against(refuse, KEY, tmp_path, monkeypatch)
    written = (tmp_path / "jobs.results.jsonl").read_text()
    assert code == 1 and KEY not in written
    assert line["error"]["message"] == "bad request from key [redacted]"
    assert line["response"]["body"]["echo"]["authorization"] == "Bearer [redacted]"


def test_redact_leaves_words_alone_and_removes_secrets() -> None:
    assert redact("a test of EMPTY ollama", "a") == "a test of EMPTY ollama"
    assert redact("EMPTY", "EMPTY") == "EMPTY"
    assert redact(f"key={KEY}", KEY) == "key=[redacted]"
    assert redact("key=local-secret-1", "local-secret-1") == "key=[redacted]"


# -- 11.4 response size cap ----------------------------------------------------------------


MB = 1024 * 1024


async def send_once(origin: str, **client_args: Any) -> Outcome:
    async with ApiClient(endpoint_for(origin, azure=False), KEY, 5.0, 10, **client_args) as c:
        return await c.send(REQ)


async def test_a_gzip_bomb_fails_the_request_without_being_inflated_in_memory() -> None:
    bomb = gzip.compress(b'{"choices": ["' + b"0" * (32 * MB) + b'"]}', 9)  # ~32 KB on the wire

    async def inflate_me(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})

    async with serve(inflate_me) as origin:
        tracemalloc.start()
        try:
            out = await send_once(origin, max_response_bytes=1 * MB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert out.kind is Kind.FAIL and out.code == "response_too_large", out
    assert "1 MB" in out.message and "--max-response-mb" in out.message
    assert peak < 8 * MB  # read in chunks and dropped at the cap, never inflated to 32 MB


async def test_a_plain_body_over_the_cap_fails_and_one_at_the_cap_passes() -> None:
    answer = orjson.dumps(CHAT_OK)

    async def reply(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    async with serve(reply) as origin:
        at_cap = await send_once(origin, max_response_bytes=len(answer))
        over = await send_once(origin, max_response_bytes=len(answer) - 1)
    assert at_cap.kind is Kind.OK
    assert over.kind is Kind.FAIL and over.code == "response_too_large" and over.status == 200


# -- 11.5 proxies --------------------------------------------------------------------------


async def test_requests_go_through_http_proxy_with_its_credentials(
    proxy_env: Callable[..., None]
) -> None:
    # A host that is not this machine (loopback never goes through a proxy) and is never
    # resolved: the proxy stands in for it.
    proxy_server = Recorder()
    async with serve(proxy_server.handle, "127.0.0.2") as proxy:
        proxy_env(HTTP_PROXY=proxy.replace("http://", "http://corp:proxypw@"))
        endpoint = Endpoint.make("http://api.example.test/v1", None, None, insecure=True)
        async with ApiClient(endpoint, KEY, 5.0, 10) as client:
            out = await client.send(REQ)
    assert out.kind is Kind.OK
    [(headers, body)] = proxy_server.got
    assert headers["Host"] == "api.example.test"
    assert headers["Proxy-Authorization"] == "Basic " + base64.b64encode(b"corp:proxypw").decode()
    assert b"the secret prompt" in body


async def test_no_proxy_sends_direct(proxy_env: Callable[..., None]) -> None:
    origin_server, proxy_server = Recorder(), Recorder()
    async with serve(origin_server.handle) as origin, serve(proxy_server.handle,
                                                            "127.0.0.2") as proxy:
        proxy_env(HTTP_PROXY=proxy, NO_PROXY="localhost,127.0.0.1")
        out = await send_once(origin)
    assert out.kind is Kind.OK and proxy_server.got == [] and len(origin_server.got) == 1


def test_proxy_for_names_the_proxy_without_its_credentials(
    proxy_env: Callable[..., None]
) -> None:
    assert proxy_for("https://api.openai.com/v1") is None
    proxy_env(HTTPS_PROXY="http://corp:proxypw@proxy.corp:3128", NO_PROXY=".internal")
    assert proxy_for("https://api.openai.com/v1") == "http://***@proxy.corp:3128"
    assert proxy_for("https://llm.internal/v1") is None
    assert proxy_for("http://127.0.0.1:8000/v1") is None  # no HTTP_PROXY, only HTTPS_PROXY
    proxy_env(https_proxy="proxy.corp:8080")  # scheme-less, as many set it; lower case wins
    assert proxy_for("https://api.openai.com/v1") == "http://proxy.corp:8080"


async def test_a_netrc_entry_for_the_api_host_adds_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy_env: Callable[..., None]
) -> None:
    # aiohttp's trust_env would also read ~/.netrc and add Basic auth beside our Bearer key
    # (refused with ValueError on every request), so proxies are resolved without it.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrcpw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    origin_server = Recorder()
    async with serve(origin_server.handle) as origin:
        out = await send_once(origin)
    assert out.kind is Kind.OK
    [(headers, _)] = origin_server.got
    assert headers["Authorization"] == f"Bearer {KEY}"


def test_the_start_up_header_names_the_proxy_in_use(
    sim: RunningSim, tmp_path: Path, proxy_env: Callable[..., None]
) -> None:
    # The simulator stands in for the corporate proxy: every request reaches it through
    # HTTP_PROXY, addressed to a remote origin that is never resolved.
    port = sim.base_url.split(":")[2].split("/")[0]
    proxy_env(HTTP_PROXY=f"http://corp:hunter2@127.0.0.1:{port}", OPENAI_API_KEY=KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    result = run_cli("submit", str(jobs), "--base-url", "http://api.example.test/v1",
                     "--insecure")
    assert result.code == 0, result.stderr
    assert f"sending to http://api.example.test/v1 via proxy http://***@127.0.0.1:{port}" in (
        result.stderr)
    assert "hunter2" not in result.stderr + result.stdout
    assert sim.stats.ok == 1
