"""Token counts: tiktoken plus OpenAI's chat formula, offline."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import tiktoken

from batchrun.tokens import (
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


def test_chat_formula_matches_tiktoken_for_several_messages() -> None:
    enc = tiktoken.get_encoding("o200k_base")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise: the cat sat on the mat <|endoftext|>."},
        {"role": "assistant", "content": "Cat sat."},
    ]
    expected = 3
    for m in messages:
        expected += 3 + sum(len(enc.encode_ordinary(v)) for v in m.values())
    assert chat_prompt_tokens(messages, "gpt-4o-mini") == expected


def test_list_of_parts_counts_text_parts() -> None:
    enc = tiktoken.get_encoding("o200k_base")
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": " second"}]
    expected = 3 + 1 + len(enc.encode("first part")) + len(enc.encode(" second")) + 3
    assert chat_prompt_tokens([{"role": "user", "content": parts}], "gpt-4o") == expected


def test_embeddings_count_input_only() -> None:
    enc = tiktoken.get_encoding("cl100k_base")
    model = "text-embedding-3-small"
    assert embedding_input_tokens("hello there", model) == len(enc.encode("hello there"))
    assert embedding_input_tokens(["a b", "c"], model) == len(enc.encode("a b")) + 1
    assert embedding_input_tokens([1, 2, 3], model) == 3
    assert embedding_input_tokens([[1, 2], [3]], model) == 3
    body = {"model": model, "input": "hello there"}
    assert prompt_tokens("/v1/embeddings", body) == len(enc.encode("hello there"))


def test_output_and_char_estimates() -> None:
    assert max_output_tokens({"max_tokens": 100, "n": 3}) == 300
    assert max_output_tokens({"max_completion_tokens": 50}) == 50
    assert max_output_tokens({}) is None
    assert char_estimate({"messages": [{"role": "user", "content": "x" * 40}]}) == 11


def test_encodings_load_with_the_network_blocked(tmp_path: Path) -> None:
    """A fresh cache and no network: counts come from the bundled vocabularies, hash-checked."""
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network blocked by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from batchrun.tokens import chat_prompt_tokens
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
