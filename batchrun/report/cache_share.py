"""The prompt-cache share `estimate` predicts: OpenAI serves the longest prefix a prompt shares
with a recent one from its cache, when that prefix is 1,024 tokens or more, in steps of 128
tokens, and bills those tokens at the cached-input price.

A prediction, not a promise: prefixes are matched a whole message at a time (the common case is
a long system prompt, or few-shot examples, shared word for word), in file order, with no cache
expiry; the server decides what it actually caches, and the run's summary says what it did.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from batchrun.policy.tokens import REPLY_PRIMING, chat_prompt_tokens

CACHE_MIN, CACHE_STEP = 1_024, 128
# Prefixes remembered: enough for the shared prompts of any file, bounded for a file of a
# million long distinct prompts (which share nothing to remember).
MAX_PREFIXES = 100_000


def cached_share(shared_tokens: int) -> int:
    """The tokens of a shared prefix the server serves from its cache."""
    return shared_tokens // CACHE_STEP * CACHE_STEP if shared_tokens >= CACHE_MIN else 0


class PrefixCache:
    """Leading messages seen so far (per model), by digest: their tokens once counted."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int | None] = {}

    def predict(self, model: str, messages: Any) -> int:
        """Cached input tokens predicted for this request; remembers its prefixes."""
        if not isinstance(messages, list):
            return 0
        digest = hashlib.blake2b(model.encode(), digest_size=16)
        chain: list[tuple[int, bytes]] = []  # (messages in the prefix, its digest)
        size = 0
        for n, message in enumerate(messages, 1):
            key = orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
            digest.update(len(key).to_bytes(8, "little") + key)
            size += len(key)
            # A prefix of fewer characters than CACHE_MIN has fewer tokens too: never cached.
            if size >= CACHE_MIN:
                chain.append((n, digest.digest()))
        shared = 0
        for n, key in reversed(chain):
            if key in self._seen:
                counted = self._seen[key]
                if counted is None:
                    counted = chat_prompt_tokens(messages[:n], model) - REPLY_PRIMING
                    self._seen[key] = counted
                shared = counted
                break
        for _, key in chain:
            if len(self._seen) >= MAX_PREFIXES:
                break
            self._seen.setdefault(key, None)
        return cached_share(shared)
