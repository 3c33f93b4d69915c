"""The spend cap's arithmetic (--max-cost): what a request could cost at most before it is sent,
what its answer cost, and whether one more request fits under the cap. Pure: the engine keeps
the running sums (backends.costcap), the job's spend file keeps them durably
(files.spend).
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from batchrun.policy.classify import reported_cached
from batchrun.policy.prices import Price, Via, price_family
from batchrun.policy.request import CHAT_URL
from batchrun.policy.tokens import char_estimate, max_output_tokens

# Servers count a prompt with their own tokenizer and chat format, which can be a little above
# batchrun's count (the simulator counts characters / 4 plus per-message tokens): the worst case
# takes the prompt this much above the larger of batchrun's two counts, so that the cap holds
# against such a server too.
PROMPT_MARGIN = 1.10
PROMPT_SLACK = 32
# Parts of a chat body the model reads and the server bills as prompt, which batchrun's prompt
# counts (messages only) do not see: function definitions and a response schema.
DEFINITIONS = ("tools", "functions", "response_format")
# Their JSON tokenizes at about 4 bytes a token (o200k); a server renders them in a format of
# its own before counting, so they are held at one token per 2 bytes.
DEFINITION_BYTES_PER_TOKEN = 2


# The most prompt tokens one image may bill: 1,536 32px patches x 2.46 on the models that count
# patches (the nano ones bill most), at most 85 + 8 tiles x 170 on those that count 512px
# tiles; gpt-4o-mini bills 2,833 + 5,667 a tile. batchrun's prompt count takes one tile's 765
# for an image whose size it does not know (policy.tokens): the cap holds the most instead.
IMAGE_WORST = 3_779
IMAGE_WORST_BY_FAMILY = {"gpt-4o-mini": 2_833 + 8 * 5_667}


def definition_tokens(body: dict[str, Any]) -> int:
    """The most prompt tokens a request's tool definitions and response schema may bill."""
    given = {k: body[k] for k in DEFINITIONS if body.get(k) is not None}
    if not given:
        return 0
    return math.ceil(len(orjson.dumps(given)) / DEFINITION_BYTES_PER_TOKEN)


def images(body: dict[str, Any]) -> int:
    """How many image parts a chat request's messages hold."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
               for part in m["content"]
               if isinstance(part, dict) and part.get("type") == "image_url")


def unseen_tokens(body: dict[str, Any], model: str) -> int:
    """Prompt tokens a server may bill beyond batchrun's counts: tool definitions, a response
    schema, and each image at the most its model bills for one."""
    pictures = images(body)
    per_image = IMAGE_WORST_BY_FAMILY.get(price_family(model) or "", IMAGE_WORST)
    return definition_tokens(body) + pictures * per_image


def worst_prompt(prompt: int, chars: int) -> int:
    """The most prompt tokens a server may bill for a prompt batchrun counts as `prompt`
    (tokenizer) and `chars` (characters / 4)."""
    return math.ceil(max(prompt, chars) * PROMPT_MARGIN) + PROMPT_SLACK


def worst_case_usd(p: Price, prompt: int, chars: int, max_output: int, via: Via,
                   unseen: int = 0) -> float:
    """A request's most possible bill: the whole prompt (with `unseen`, what batchrun's counts
    do not see) at the input price (no cache assumed) and n x max_tokens at the output price,
    at the path's rate (`max_output` is already n x max_tokens)."""
    return p.cost(worst_prompt(prompt, chars) + unseen, max_output, 0, via)


def body_worst_usd(p: Price, url: str, body: dict[str, Any], prompt: int, via: Via) -> float:
    """A request's worst case from its body and its prompt tokens (batchrun's count)."""
    out = max_output_tokens(body) if url == CHAT_URL else 0
    return worst_case_usd(p, prompt, char_estimate(body), out or 0, via,
                          unseen_tokens(body, str(body.get("model", ""))))


def fits(cap: float, spent: float, reserved: float, worst: float) -> bool:
    """Whether a request whose worst case is `worst` can be admitted: spent, what requests in
    flight may still cost, and it stay within the cap."""
    return spent + reserved + worst <= cap


def suggested_cap(cap: float, spent: float, need: float) -> float:
    """The larger cap a paused-cost job is told to resume with: twice this one, and at least
    enough for the request that did not fit (`need`, its worst case) on top of what is spent,
    rounded up to the cent so the printed figure is never below it."""
    return math.ceil(max(cap * 2, spent + need + 0.01) * 100) / 100


def answer_usd(p: Price, usage: tuple[int, int] | None, body: Any, status: int | None,
               worst: float, via: Via) -> float:
    """What one attempt is settled at. With usage: its tokens at list prices, cached input at
    the cached price. A 4xx (a refusal, a 429) bills nothing. Anything else without usage (a
    timeout, a dropped connection, a 5xx, an answer whose usage is unreadable) may have been
    billed whole: it keeps its worst case, so the job's spend is never below the server's
    bill."""
    if usage is not None:
        return p.cost(usage[0], usage[1], reported_cached(body), via)
    return 0.0 if status is not None and 400 <= status < 500 else worst
