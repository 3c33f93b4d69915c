"""A server's own charge rules (written here, not batchrun's), the texts they charge and the
429s that tell the client about them."""

from __future__ import annotations

import math

import orjson

from batchrun.policy.classify import Outcome, classify
from batchrun.policy.request import CHAT_URL
from tests.helpers.cli import FAKE_KEY

CHINESE = ("人工智能正在改变我们的生活方式。在过去的十年里，机器学习技术取得了巨大的进步，尤其是在"
           "自然语言处理和计算机视觉领域。研究人员开发了许多新的算法，使计算机能够理解和生成人类语言。")


PROSE = ("The river ran past the old mill and on toward the sea, carrying leaves and the "
         "last light of the afternoon. ")


def by_chars(body: dict[str, object], per_token: float = 4.0) -> int:
    """A server that estimates the prompt from its characters, plus max_tokens."""
    messages = body["messages"]
    assert isinstance(messages, list)
    chars = sum(len(m["content"]) for m in messages)
    max_tokens = body["max_tokens"]
    assert isinstance(max_tokens, int)
    return math.ceil(chars / per_token) + max_tokens


def refusal(message: str) -> Outcome:
    body = orjson.dumps({"error": {"message": message, "type": "tokens",
                                   "code": "rate_limit_exceeded"}})
    return classify(429, {}, body, CHAT_URL, FAKE_KEY)


TPD_429 = ("Rate limit reached for gpt-4o-mini in organization org-x on tokens per day (TPD): "
           "Limit 2000, Used {used}, Requested 300. Please try again in 6m0s.")
