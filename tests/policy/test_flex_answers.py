"""What a flex answer means: "no capacity now" however a server spells it, a rate limit still a
rate limit, and which model names batchrun vouches for as taking flex."""

from __future__ import annotations

import orjson
import pytest

from batchrun.policy import flex
from batchrun.policy.classify import Kind, classify
from batchrun.policy.request import CHAT_URL
from tests.helpers.cli import FAKE_KEY


def kind_of(status: int, error: dict[str, str]) -> Kind:
    return classify(status, {}, orjson.dumps({"error": error}), CHAT_URL, FAKE_KEY).kind


# The flex guide names the answer "429 Resource Unavailable" and prints no body; Groq documents
# `capacity_exceeded`. An error code is an identifier, and gateways re-case and re-join them.
@pytest.mark.parametrize(("status", "error"), [
    (429, {"type": "resource_unavailable"}),
    (429, {"code": "resource_unavailable"}),
    (429, {"message": "Resource Unavailable"}),
    (429, {"type": "Resource_Unavailable"}),
    (429, {"code": "RESOURCE_UNAVAILABLE"}),
    (429, {"code": "resource-unavailable"}),
    (429, {"message": "resource_unavailable: try again later"}),
    (429, {"code": "CAPACITY_EXCEEDED"}),
    (498, {"code": "Capacity_Exceeded"}),
])
def test_no_capacity_in_any_spelling_is_waited_out_not_paced(
    status: int, error: dict[str, str],
) -> None:
    assert kind_of(status, error) is Kind.FLEX_UNAVAILABLE


def test_groqs_498_without_a_body_is_no_capacity() -> None:
    assert classify(498, {}, b"", CHAT_URL, FAKE_KEY).kind is Kind.FLEX_UNAVAILABLE


@pytest.mark.parametrize("error", [
    {"code": "rate_limit_exceeded", "message": "Rate limit reached for gpt-5-mini on tokens "
     "per min (TPM): Limit 1000, Used 990, Requested 130. Please try again in 6s."},
    {"code": "RATE_LIMIT_EXCEEDED"},
    {"message": "Too many requests: the resource is busy"},
])
def test_a_rate_limit_429_stays_a_rate_limit(error: dict[str, str]) -> None:
    assert kind_of(429, error) is Kind.RATE_MINUTE


# OpenAI's flex list names model families; a variant of a family (a chat-latest alias, a -pro
# or -codex model) is another model with its own availability, not the family's.
@pytest.mark.parametrize("model", ["gpt-5-chat-latest", "o3-pro", "gpt-5-codex",
                                   "o4-mini-deep-research"])
def test_a_variant_of_a_flex_family_is_not_vouched_for(model: str) -> None:
    assert flex.refusal([model]) is None  # the price table does not say it lacks flex...
    warning = flex.warning([model])
    assert warning is not None and model in warning  # ...nor that it has it


@pytest.mark.parametrize("model", ["gpt-5-mini", "gpt-5-mini-2025-08-07", "o3-2025-04-16",
                                   "GPT-5"])
def test_a_flex_model_and_its_dated_snapshots_go_without_a_warning(model: str) -> None:
    assert flex.refusal([model]) is None and flex.warning([model]) is None


@pytest.mark.parametrize("model", ["gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14"])
def test_a_dated_model_without_flex_is_refused_by_name(model: str) -> None:
    refusal = flex.refusal([model])
    assert refusal is not None and model in refusal


def test_a_498_that_names_another_error_is_that_error() -> None:
    # 498 is no standard status: ArcGIS-style gateways answer it for an invalid token. Waiting
    # --flex-wait (15 minutes by default) on each request for capacity that is not the problem
    # would hide the real error; Groq's own 498 names capacity_exceeded, or nothing.
    out = classify(498, {}, orjson.dumps({"error": {"code": 498, "message": "Invalid token."}}),
                   CHAT_URL, FAKE_KEY)
    assert out.kind is Kind.FAIL
    assert out.message == "Invalid token."


def test_embeddings_models_are_neither_refused_nor_warned_about() -> None:
    assert flex.refusal(["text-embedding-3-small", "gpt-5-mini"]) is None
    assert flex.warning(["text-embedding-3-large"]) is None


def test_several_models_without_flex_are_named_together() -> None:
    refusal = flex.refusal(["gpt-4o-mini", "gpt-4.1"])
    assert refusal is not None and "gpt-4.1, gpt-4o-mini do not offer flex" in refusal
