"""What the response cache files an answer under (#25): one digest of who asked what.

(host, the API key, url, the canonical body): the same request to the same server under the same
key. The key enters only through a salted digest, so the cache holds nothing a key can be
recovered from, and an answer is never found under a key that did not pay for it. The body is
canonical (keys sorted at every depth, no whitespace), so two lines that differ only in the
order of their fields are one request; anything else that differs (a temperature, a space in a
prompt) is another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson


def key_digest(api_key: str) -> bytes:
    """The API key's part of a cache key (salted: not the ledger's fingerprint, not the key)."""
    return hashlib.sha256(b"batchrun-cache\0" + api_key.encode()).digest()


def canonical(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def cache_key(host: str, key: bytes, url: str, body: Mapping[str, Any]) -> bytes:
    """`key`: key_digest(the API key). `url`: the endpoint's path (/v1/chat/completions)."""
    h = hashlib.sha256()
    for part in (host.encode(), key, url.encode()):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    h.update(canonical(body))
    return h.digest()
