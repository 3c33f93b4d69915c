"""What a request costs before it is sent, and whether it can ever be sent. Shared by the engine
(which records a request that can never run as `request_too_large` without sending it) and by
`estimate` (which lists it under never_run), so the two always agree."""

from __future__ import annotations

from dataclasses import dataclass

from batchrun.pacing.calibrate import Visible
from batchrun.policy.request import CHAT_URL, Request
from batchrun.policy.tiers import context_window
from batchrun.policy.tokens import char_estimate, choices, max_output_tokens, prompt_tokens


@dataclass(frozen=True, slots=True)
class Size:
    prompt: int  # exact prompt tokens (tiktoken and the chat formula)
    max_output: int | None  # n x max output tokens; None when the request sets no maximum
    charge: int  # what the limits count: the larger prompt estimate plus the output charged
    chars: int = 0  # the characters estimate of the prompt, ceil(characters / 4)
    output_charged: int = 0  # n x max output tokens, or the assumed output when none is set

    @property
    def visible(self) -> Visible:
        """What a server's charge can be predicted from (batchrun.pacing.calibrate)."""
        return Visible(self.chars, self.prompt, self.output_charged)

    @classmethod
    def of(cls, request: Request, prompt: int, assumed_output: float) -> Size:
        """`assumed_output`: what a chat request that sets no maximum is charged per choice."""
        out = max_output_tokens(request.body)
        charged = out
        if out is None and request.url == CHAT_URL:
            charged = round(assumed_output * choices(request.body))
        chars = char_estimate(request.body)
        return cls(prompt, out, max(prompt, chars) + (charged or 0), chars, charged or 0)


def size_of(request: Request, assumed_output: float) -> Size:
    return Size.of(request, prompt_tokens(request.url, request.body), assumed_output)


def never_fits(size: Size, model: str, tpm: int, tpd: int) -> str | None:
    """Why a request of this size can never run under these limits (0: unlimited), or None."""
    if tpm and least_charge(size) > tpm:
        return (f"this request needs about {least_charge(size):,} tokens, more than the {tpm:,} "
                f"tokens/min limit of {model}; shorten it or lower max_tokens")
    if tpd and size.charge > tpd:
        return (f"this request needs about {size.charge:,} tokens, more than the whole daily "
                f"budget of {tpd:,} tokens of {model}; shorten it, lower max_tokens or raise --tpd")
    return _over_window(size, model)


def least_charge(size: Size) -> int:
    """The least a server may charge the request against its per-minute limit: servers count
    the prompt by characters or by a tokenizer (2.5 times apart on Chinese), and charge the
    output the request sets. Failing a request unsent is final, so it takes the smaller count;
    above it, the server's own refusal (free) says whether it is too large."""
    prompt = min(size.prompt, size.chars) if size.chars > 0 else size.prompt
    return prompt + (size.max_output or 0)


def never_fits_batch(size: Size, model: str, queue_tokens: int) -> str | None:
    """Why a request can never run through the Batch API, whose one limit is the model's
    enqueued-token queue (prompt tokens; 0: unlimited), or None. No per-minute or daily limit
    applies there."""
    if queue_tokens and size.prompt > queue_tokens:
        return (f"its {size.prompt:,} prompt tokens are more than the Batch API's enqueued-token "
                f"limit of {queue_tokens:,} for {model}; shorten it or raise "
                "--batch-queue-tokens")
    return _over_window(size, model)


def _over_window(size: Size, model: str) -> str | None:
    window = context_window(model)
    if window and size.prompt + (size.max_output or 0) > window:
        return (f"prompt {size.prompt:,} + max output {size.max_output or 0:,} tokens exceed "
                f"the {window:,}-token context window of {model}; shorten it or lower max_tokens")
    return None
