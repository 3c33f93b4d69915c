"""What each response means (the classification table), and where requests go."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aioresponses import aioresponses

from batchrun.errors import InputError
from batchrun.http.client import ApiClient, Endpoint, Kind, classify, parse_duration, retry_hint
from batchrun.policy.request import CHAT_URL, EMBEDDINGS_URL, Request

KEY = "sk-test-abcdefghijklmnop1234"


def err(message: str, etype: str = "invalid_request_error", code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": etype, "code": code}})


TPM_429 = err(
    "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min (TPM): "
    "Limit 200000, Used 162960, Requested 42288. Please try again in 1.574s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more.",
    "tokens", "rate_limit_exceeded",
)
TPD_429 = err(
    "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per day (TPD): "
    "Limit 2000000, Used 1999000, Requested 2000. Please try again in 7m12s.",
    "tokens", "rate_limit_exceeded",
)
QUOTA_429 = err("You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota", "insufficient_quota")
CHAT_OK = orjson.dumps({"choices": [{"message": {"content": "x"}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2}})


@pytest.mark.parametrize(("status", "body", "headers", "kind"), [
    (200, CHAT_OK, {}, Kind.OK),
    (201, CHAT_OK, {}, Kind.OK),  # every 2xx is an answer (SERVERS.md)
    (402, err("Payment required"), {}, Kind.REFUSED),
    (200, b'{"id": "x"}', {}, Kind.RETRY),  # no choices
    (200, b'{"choices": [{"mess', {}, Kind.RETRY),  # truncated
    (200, b"<html>oops</html>", {}, Kind.RETRY),
    (429, TPM_429, {}, Kind.RATE_MINUTE),
    (429, TPD_429, {}, Kind.RATE_DAY),
    (429, err("... on requests per day (RPD): Limit 10000 ..."), {}, Kind.RATE_DAY),
    (429, QUOTA_429, {}, Kind.REFUSED),
    (401, err("Incorrect API key provided", code="invalid_api_key"), {}, Kind.REFUSED),
    (403, err("Country not supported"), {}, Kind.REFUSED),
    (400, err("billing hard limit", code="billing_hard_limit_reached"), {}, Kind.REFUSED),
    (500, err("server error", "server_error"), {}, Kind.RETRY),
    (502, b"<html>Bad Gateway</html>", {}, Kind.RETRY),
    (503, b"", {"retry-after": "3"}, Kind.RETRY),
    (408, b"", {}, Kind.RETRY),
    (400, err("Invalid value for 'temperature'"), {}, Kind.FAIL),
    (404, err("The model `gpt-9` does not exist", code="model_not_found"), {}, Kind.FAIL),
    (422, b"not json", {}, Kind.FAIL),
])
def test_classification_table(status: int, body: bytes, headers: dict[str, str],
                              kind: Kind) -> None:
    assert classify(status, headers, body, CHAT_URL, KEY).kind is kind


def test_embeddings_need_data_not_choices() -> None:
    ok = orjson.dumps({"data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 3}})
    assert classify(200, {}, ok, EMBEDDINGS_URL, KEY).kind is Kind.OK
    assert classify(200, {}, CHAT_OK, EMBEDDINGS_URL, KEY).kind is Kind.RETRY


def test_429_hints_from_every_source() -> None:
    assert classify(429, {}, TPM_429, CHAT_URL, KEY).hint_s == pytest.approx(1.574)
    assert retry_hint({"retry-after-ms": "250"}, "") == 0.25
    assert retry_hint({"retry-after": "2"}, "") == 2.0
    assert retry_hint({"x-ratelimit-reset-requests": "1s",
                       "x-ratelimit-reset-tokens": "6m0s"}, "") == 1.0
    assert retry_hint({}, "no hint here") is None
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("20ms") == pytest.approx(0.02)


def test_server_messages_are_redacted() -> None:
    body = err(f"Incorrect API key provided: {KEY}. Also sk-proj-OTHERKEYabcdefgh12345 leaked.",
               code="invalid_api_key")
    out = classify(401, {}, body, CHAT_URL, KEY)
    assert KEY not in out.message and "sk-proj-OTHER" not in out.message
    assert "[redacted]" in out.message


def test_usage_and_request_id() -> None:
    out = classify(200, {"x-request-id": "req_123"}, CHAT_OK, CHAT_URL, KEY)
    assert out.usage == (5, 2) and out.request_id == "req_123"


def test_azure_routes_and_auth() -> None:
    ep = Endpoint.make(None, "https://my-res.openai.azure.com/", None)
    req = Request(1, "a", CHAT_URL, {"model": "my deploy", "messages": []})
    assert ep.url_for(req) == ("https://my-res.openai.azure.com/openai/deployments/my%20deploy"
                               "/chat/completions?api-version=2024-10-21")
    assert ep.key_env == "AZURE_OPENAI_API_KEY"


def test_openai_compatible_base_url() -> None:
    ep = Endpoint.make("http://127.0.0.1:8000/v1/", None, None)
    req = Request(1, "a", EMBEDDINGS_URL, {"model": "m", "input": "x"})
    assert ep.url_for(req) == "http://127.0.0.1:8000/v1/embeddings"
    assert ep.host == "127.0.0.1:8000"


def test_plain_http_to_a_remote_host_needs_insecure() -> None:
    with pytest.raises(InputError, match="--insecure"):
        Endpoint.make("http://api.example.com/v1", None, None)
    assert Endpoint.make("http://api.example.com/v1", None, None, insecure=True).base_url
    assert Endpoint.make("http://localhost:8080/v1", None, None).base_url
    with pytest.raises(InputError, match="not an http"):
        Endpoint.make("ftp://x/v1", None, None)


def test_missing_key_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = Endpoint.make(None, None, "MY_KEY_VAR")
    with pytest.raises(InputError, match=r"\$MY_KEY_VAR is not set"):
        ep.api_key()
    monkeypatch.setenv("MY_KEY_VAR", "sk-123")
    assert ep.api_key() == "sk-123"


REQ = Request(1, "a", CHAT_URL, {"model": "gpt-4o-mini", "messages": [
    {"role": "user", "content": "hi"}]})
URL = "https://api.openai.com/v1/chat/completions"


async def send_with(mock_setup: dict[str, object]) -> object:
    with aioresponses() as mocked:
        mocked.post(URL, **mock_setup)  # type: ignore[arg-type]
        async with ApiClient(Endpoint(), KEY, 5.0, 10) as client:
            return await client.send(REQ)


async def test_timeout_is_retryable() -> None:
    out = await send_with({"exception": TimeoutError()})
    assert out.kind is Kind.RETRY and out.code == "timeout"  # type: ignore[attr-defined]


async def test_connection_reset_is_retryable() -> None:
    out = await send_with({"exception": aiohttp.ServerDisconnectedError()})
    assert out.kind is Kind.RETRY and out.code == "connection_error"  # type: ignore[attr-defined]


# aioresponses cannot build response bodies under aiohttp 3.14 (ClientResponse grew a required
# argument), so responses with bodies are tested against the simulator on a real socket instead.


async def test_key_goes_in_the_bearer_header_for_openai_and_api_key_header_for_azure() -> None:
    from batchrun.simulator import SimConfig, SimServer, Simulator

    async with SimServer(Simulator(SimConfig(api_key=KEY))) as server:
        openai = Endpoint.make(server.base_url, None, None)
        azure = Endpoint.make(None, server.azure_endpoint, None)
        for endpoint in (openai, azure):
            async with ApiClient(endpoint, KEY, 5.0, 10) as client:
                assert (await client.send(REQ)).kind is Kind.OK
            async with ApiClient(endpoint, "sk-wrong-key-123456789", 5.0, 10) as client:
                wrong = await client.send(REQ)
            assert wrong.kind is Kind.REFUSED and wrong.status == 401


def test_error_bodies_are_scrubbed_but_answers_are_not() -> None:
    body = err(f"bad key {KEY} and sk-proj-SOMEONEELSE1234567", code="whatever")
    out = classify(400, {}, body, CHAT_URL, KEY)
    assert KEY not in orjson.dumps(out.body).decode()
    assert "sk-proj-SOMEONE" not in orjson.dumps(out.body).decode()
    # A model may legitimately write key-shaped text; only the real key is ever removed.
    answer = orjson.dumps({"choices": [{"message": {"content": "try sk-example-000000000000"}}]})
    ok = classify(200, {}, answer, CHAT_URL, KEY)
    assert ok.body["choices"][0]["message"]["content"] == "try sk-example-000000000000"
