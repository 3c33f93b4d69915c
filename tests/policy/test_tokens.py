"""Token counts: tiktoken plus OpenAI's chat formula, offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from batchrun.policy.tokens import (
    char_estimate,
    chat_prompt_tokens,
    embedding_input_tokens,
    encoding_name_for,
    max_output_tokens,
    prompt_tokens,
)


def test_encoding_per_model_family() -> None:
    assert encoding_name_for("gpt-4o-mini") == "o200k_base"
    assert encoding_name_for("gpt-4o-mini-2024-07-18") == "o200k_base"
    assert encoding_name_for("gpt-4.1-nano") == "o200k_base"
    assert encoding_name_for("o3-mini") == "o200k_base"
    assert encoding_name_for("gpt-4") == "cl100k_base"
    assert encoding_name_for("gpt-3.5-turbo-0125") == "cl100k_base"
    assert encoding_name_for("text-embedding-3-small") == "cl100k_base"


def test_hand_checked_chat_counts() -> None:
    # "Hello world" is 2 tokens, "user" 1: 3 (message) + 1 + 2 + 3 (priming) = 9.
    assert chat_prompt_tokens([{"role": "user", "content": "Hello world"}], "gpt-4o-mini") == 9
    assert chat_prompt_tokens([{"role": "user", "content": "Hello world"}], "gpt-4") == 9
    # A name costs its tokens plus one.
    named = [{"role": "user", "name": "bob", "content": "Hello world"}]
    assert chat_prompt_tokens(named, "gpt-4o-mini") == 9 + 1 + 1


# Counts below are checked by hand: each text split into o200k_base tokens (shown), plus 3 per
# message, 1 per name and 3 priming the reply. Re-deriving them from tiktoken here would only
# repeat the implementation's arithmetic.


def test_hand_checked_several_messages_with_special_token_text() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},  # You| are| terse|.       4
        {"role": "user", "content": "Hi <|endoftext|>"},  # Hi| <||end|of|text||>  8
        {"role": "assistant", "content": "Cat sat."},  # Cat| sat|.                 3
    ]
    # 3 messages x 3 + roles 3 + texts 15 + priming 3
    assert chat_prompt_tokens(messages, "gpt-4o-mini") == 9 + 3 + 15 + 3


def test_hand_checked_multi_part_content_and_images() -> None:
    parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]
    # 3 + user 1 + part| one 2 + two 1 + 3
    assert chat_prompt_tokens([{"role": "user", "content": parts}], "gpt-4o") == 10
    low = [{"type": "text", "text": "two"},
           {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}]
    # 3 + user 1 + two 1 + a low-detail image 85 + 3
    assert chat_prompt_tokens([{"role": "user", "content": low}], "gpt-4o") == 93


def test_hand_checked_cjk_text() -> None:
    # 3 + user 1 + three tokens (the two words and the full-width comma) + 3
    assert chat_prompt_tokens([{"role": "user", "content": "你好，世界"}], "gpt-4o-mini") == 10


def test_hand_checked_tool_calls() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 20°C"},
    ]
    # assistant: 3 + assistant 1 + get|_weather 2 + {"|city|":| "|Paris|"} 6       = 12
    # tool:      3 + tool 1 + call|_|1 3 + Sunny|,| |20|°C 5                        = 12
    assert chat_prompt_tokens(messages, "gpt-4o-mini") == 12 + 12 + 3


def test_hand_checked_embeddings_count_the_input_only() -> None:
    model = "text-embedding-3-small"  # cl100k_base
    assert embedding_input_tokens("hello there", model) == 2  # hello| there
    assert embedding_input_tokens(["a b", "c"], model) == 3  # a| b, c
    assert embedding_input_tokens([1, 2, 3], model) == 3  # token arrays count as they are
    assert embedding_input_tokens([[1, 2], [3]], model) == 3
    assert prompt_tokens("/v1/embeddings", {"model": model, "input": "hello there"}) == 2


def test_output_and_char_estimates() -> None:
    assert max_output_tokens({"max_tokens": 100, "n": 3}) == 300
    assert max_output_tokens({"max_completion_tokens": 50}) == 50
    assert max_output_tokens({}) is None
    # both set: the larger, whichever one the server reads (the spend cap must hold either way)
    assert max_output_tokens({"max_tokens": 900, "max_completion_tokens": 50}) == 900
    assert max_output_tokens({"max_tokens": 50, "max_completion_tokens": 900}) == 900
    assert char_estimate({"messages": [{"role": "user", "content": "x" * 40}]}) == 10


def test_the_characters_estimate_counts_what_the_model_reads_not_the_messages_form() -> None:
    """A role or a content part's type is the message's form, which tiktoken's chat formula
    charges per message; the characters estimate counts the texts: contents, names, a tool
    call's name and arguments. A characters/4 server that counts contents charged the small
    requests of bench cell T 34 where the role made ours 35 (3 % of the limit)."""
    def body(*messages: dict[str, Any]) -> dict[str, Any]:
        return {"messages": list(messages)}

    assert char_estimate(body({"role": "user", "content": "word " * 11})) == 14  # 55 chars
    parts = [{"type": "text", "text": "y" * 8}]
    assert char_estimate(body({"role": "system", "content": "x" * 8},
                              {"role": "user", "content": parts})) == 4
    assert char_estimate(body({"role": "user", "name": "ann", "content": "x" * 5})) == 2
    call = {"type": "function", "function": {"name": "get", "arguments": '{"q": 1}'}}  # 3 + 8
    assert char_estimate(body({"role": "assistant", "content": None, "tool_calls": [call]})) == 3
    assert char_estimate({"input": "x" * 40}) == 10


def test_encodings_load_with_the_network_blocked(tmp_path: Path) -> None:
    """A fresh cache and no network: counts come from the bundled vocabularies, hash-checked."""
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network blocked by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from batchrun.policy.tokens import chat_prompt_tokens
        print(chat_prompt_tokens([{"role": "user", "content": "Hello world"}], "gpt-4o-mini"),
              chat_prompt_tokens([{"role": "user", "content": "Hello world"}], "gpt-4"))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["9", "9"]
    assert len(list((tmp_path / "empty-cache").iterdir())) == 2


def test_counting_many_distinct_short_prompts_keeps_a_bounded_cache(monkeypatch: Any) -> None:
    # Short strings (roles, names) are counted once and remembered; a file of a million
    # distinct short prompts grew that memory without end. It is now bounded, and every count
    # stays exactly what counting each request alone gives.
    from batchrun.policy import tokens

    monkeypatch.setattr(tokens, "_SHORT_CACHE", {})
    monkeypatch.setattr(tokens, "_SHORT_CACHE_MAX", 10)
    requests = [("/v1/chat/completions",
                 {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {i}"}]})
                for i in range(100)]
    assert tokens.prompt_tokens_many(requests) == [prompt_tokens(u, b) for u, b in requests]
    assert all(len(cache) <= 10 for cache in tokens._SHORT_CACHE.values())
