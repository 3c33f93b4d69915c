"""One request, validated and ready to send, and the endpoints it can be sent to.

It sits in policy, not beside the reader in files/, because every decision about a request (its
kind, its size, its tokens) takes one: pure code must not import the reader to name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"


@dataclass(slots=True)
class Request:
    """One request, ready to send: `body` always names its model."""

    line_no: int
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.body["model"])
