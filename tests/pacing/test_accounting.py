"""The server's accounting on virtual time: what it charges and the limits it teaches, against
tests/helpers/strict_server.py (its own charge rule and bucket). Issue 22."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from batchrun.files.ledger import Ledger, Scope
from batchrun.pacing.calibrate import CHARS
from batchrun.policy.request import Request
from batchrun.policy.sizing import size_of
from batchrun.policy.tokens import prompt_tokens
from batchrun.simulator.model import usage_prompt_tokens
from tests.helpers.charging import CHINESE, PROSE
from tests.helpers.cli import FAKE_KEY, estimate, run_cli
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.scripted_server import Server, engine_run
from tests.helpers.sim import RunningSim
from tests.helpers.strict_server import StrictServer, by_characters, chars_of

ENV = {"OPENAI_API_KEY": FAKE_KEY}


def tiktoken_prompt(body: dict[str, Any]) -> int:
    return prompt_tokens("/v1/chat/completions", body)


def test_after_a_too_large_refusal_small_requests_pace_at_the_taught_limit(
    tmp_path: Path,
) -> None:
    """Told 30,000 TPM, the server's real limit is 2,000: its "Request too large ... Limit 2000"
    teaches it. The refused request was never charged, so the 18 small ones after it go at the
    taught 2,000 tokens a minute (they took 94 s, 18 % of it, while a debt for the refused
    request's 3,000 tokens was paid off first)."""
    strict = StrictServer(2000, by_characters(4), window_s=10)
    rows = [{"id": "big", "prompt": "x" * 120, "max_tokens": 3000},
            *({"id": f"s{i}", "prompt": "word " * 11, "max_tokens": 20} for i in range(18))]
    server = Server(strict)
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 30000, "rpm": 500})
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert results["big"]["error"]["code"] == "request_too_large"
    assert all(results[f"s{i}"]["error"] is None for i in range(18))
    ours = sum(size_of(Request(1, "s", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 11}],
        "max_tokens": 20}), 0).charge for _ in range(18))
    refused_at = server.times("big")[0]
    last = max(t for t, cid in server.sent if cid != "big")
    at_the_limit = ours / (2000 / 60)
    assert last - refused_at <= at_the_limit / 0.95
    assert strict.refused == 1


def test_after_a_too_large_refusal_the_small_requests_spend_the_bucket_at_once(
    tmp_path: Path,
) -> None:
    """The refused request was charged nothing, so the server's bucket is still full: the small
    ones go as soon as the refusal is back, not after the debt its 3,030 tokens ran up at the
    limit we were told (they waited 2.2 s for it, 75 % of the bench's ideal, cell T). What is
    left below the ideal is the burst probing up to the server's 10 s bucket after the refusal
    (the ideal spends it at once)."""
    strict = StrictServer(2000, by_characters(4), window_s=10, headers="admission")
    rows = [{"id": "big", "prompt": "x" * 120, "max_tokens": 3000},
            *({"id": f"s{i}", "prompt": "word " * 11, "max_tokens": 20} for i in range(18))]
    server = Server(strict)
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 60000, "rpm": 600})
    assert stop is None and strict.refused == 1
    first_small = min(t for t, cid in server.sent if cid != "big")
    assert first_small - server.times("big")[0] <= 0.1
    # 0.950 while each small request was charged 35 where the server charges 34 (its role's
    # characters in our estimate, and a 1 % margin rounded up to a whole token)
    assert share(strict, server) >= 0.955


def chat(row: dict[str, object]) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": row["max_tokens"],
            "messages": [{"role": "user", "content": row["prompt"]}]}


def chinese_rows(count: int) -> list[dict[str, object]]:
    rng = random.Random(0)
    text = CHINESE * 4
    rows: list[dict[str, object]] = []
    for i in range(count):
        start = rng.randrange(len(CHINESE))
        rows.append({"id": f"c{i}", "prompt": text[start:start + rng.randint(150, 400)],
                     "max_tokens": 20})
    return rows


def share(strict: StrictServer, server: Server) -> float:
    """The bench's measure: the ideal time over the job's span at the server."""
    first = min(t for t, _ in server.sent)
    last = max(t for t, _ in strict.admitted) + strict.latency_s
    return strict.ideal_s() / (last - first)


def test_chinese_prose_on_a_characters_server_runs_at_the_limit(tmp_path: Path) -> None:
    """The server charges ceil(characters / 4) + max_tokens, about half of tiktoken's count
    on Chinese, and bills what it counts: its usage teaches the charge (49 % of the limit when
    we admitted at tiktoken's count)."""
    strict = StrictServer(60_000, by_characters(4), window_s=1)
    server = Server(strict)
    rows = chinese_rows(600)
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 60_000, "rpm": 6_000})
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert len(results) == 600 and all(r["error"] is None for r in results.values())
    assert share(strict, server) >= 0.95
    assert strict.refused <= 6


def test_chinese_prose_on_a_server_that_bills_tiktoken_learns_from_its_429s(
    tmp_path: Path,
) -> None:
    """OpenAI's habit: usage is tiktoken's count, the limiter counts characters. The usage
    leads to our own count; the first 429's "Requested R" to the server's."""
    strict = StrictServer(60_000, by_characters(4), window_s=1, usage=tiktoken_prompt)
    server = Server(strict)
    rows = chinese_rows(600)
    # Someone else spent the key's bucket a moment before we started: its first 429 speaks.
    strict.level = 0
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 60_000, "rpm": 6_000})
    assert stop is None
    assert share(strict, server) >= 0.95
    assert strict.refused <= 6


def test_a_usage_above_the_rate_charge_never_slows_the_job(tmp_path: Path) -> None:
    """A whole-minute bucket that holds 2/3 of the job; the server bills 7 tokens more than its
    limiter charges. Usage above our own count is not believed (the job took 33.2 s for an
    ideal of 29.7, 89 %, when it was)."""
    strict = StrictServer(60_000, by_characters(4), window_s=60, headers="admission",
                          usage=lambda body: math.ceil(chars_of(body) / 4) + 7)
    server = Server(strict)
    rows = [{"id": f"m{i}", "max_tokens": 100 + i % 100, "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": f"Request {i}: " + (PROSE * 8)[: 200 + (i * 37) % 400]}]}
        for i in range(360)]
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 60_000, "rpm": 600})
    assert stop is None
    assert share(strict, server) >= 0.95
    assert strict.refused == 0


def _fresh_output(tmp_path: Path) -> None:
    """A new job in the same place: only the ledger (what was learned) stays."""
    for path in tmp_path.iterdir():
        if path.name != "ledger.sqlite3" and path.is_file():
            path.unlink()


def test_a_second_run_starts_at_the_charge_the_first_one_learned(tmp_path: Path) -> None:
    """OpenAI's habit again (usage is tiktoken's count, the limiter counts characters): a
    server that never refuses never teaches its charge, so a second run that did not start
    from the ledger's learned accounting ran at our own count, about half of the limit."""
    first = StrictServer(60_000, by_characters(4), window_s=1, usage=tiktoken_prompt)
    first.level = 0  # its first 429s teach the charge, and the run ends by recording it
    stop, _, _ = engine_run(tmp_path, chinese_rows(300), Server(first),
                            limits={"tpm": 60_000, "rpm": 6_000})
    assert stop is None and first.refused >= 1
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    learned = ledger.accounting(Scope("h", "k", "gpt-4o-mini"))
    ledger.close()
    # a characters/4 server: a prompt costs 1 x its characters estimate
    assert learned is not None and learned.basis == CHARS and 0.9 < learned.k < 1.1
    _fresh_output(tmp_path)
    second = StrictServer(60_000, by_characters(4), window_s=1, usage=tiktoken_prompt)
    server = Server(second)
    stop, _, _ = engine_run(tmp_path, chinese_rows(600), server,
                            limits={"tpm": 60_000, "rpm": 6_000})
    assert stop is None
    assert len(read_results(tmp_path / "out.jsonl")) == 600
    # At most the probe of the opening burst past the server's unseen 1 s window (the limiter's
    # one 429, as without any accounting to learn); a charge learned again costs 4.
    assert second.refused <= 1
    assert share(second, server) >= 0.95
    # From the start: the first 5 s carry 5 s of the limit (72 % when the charge was learned
    # again from this run's own 429)
    assert sum(c for t, c in second.admitted if t < 5) >= 0.95 * 5 * second.rate


def test_estimate_after_a_run_uses_the_accounting_the_run_learned(
        sim: RunningSim, tmp_path: Path) -> None:
    """End to end through the CLI: the simulator counts Chinese prose by characters (about half
    of tiktoken's count) and bills what it counts; the run records what its usage taught, and
    `estimate` for the same server and key says it used it."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", chinese_rows(40))
    args = ("--base-url", sim.base_url)
    assert run_cli("submit", str(jobs), *args, env=ENV).code == 0
    model = estimate(str(jobs), *args, env=ENV)["models"][0]
    assert model["accounting"]["used"] == "learned"
    assert 0.3 < model["accounting"]["ratio"] < 0.8
    # What the simulator bills is the chat formula on characters (the role's included, 3 a
    # message, 3 priming the reply): a characters fit and a tokens fit each absorb its constant
    # and explain it alike, so which basis is learned says little; what it predicts must agree.
    billed = sum(usage_prompt_tokens(chat(row)) + 20 for row in chinese_rows(40))
    assert abs(model["accounting"]["server_charge_tokens"] / billed - 1) <= 0.03
    shown = " ".join(run_cli("estimate", str(jobs), *args, env=ENV).stdout.split())
    assert "the server's charge as learned" in shown


def test_a_prompt_over_the_limit_by_tiktoken_but_not_by_the_servers_count_is_sent(
    tmp_path: Path,
) -> None:
    """Chinese prose counts about 2.5 times more by tiktoken than by characters. A server that
    charges characters takes a prompt tiktoken counts above its TPM: batchrun failed it as
    request_too_large without sending it, on a count the server does not use. A request is
    failed unsent only when the smaller of the two counts exceeds the limit; past that the
    server's own refusal (free, and final) says so."""
    strict = StrictServer(2000, by_characters(4), window_s=60)
    rows = [{"id": "long", "prompt": (CHINESE * 60)[:5000], "max_tokens": 20},
            {"id": "huge", "prompt": (CHINESE * 300)[:24000], "max_tokens": 20}]
    size = size_of(Request(1, "long", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": rows[0]["prompt"]}],
        "max_tokens": 20}), 0)
    assert size.prompt > 2000 > size.chars + 20  # the case: over by tiktoken only
    server = Server(strict)
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 2000, "rpm": 500})
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert results["long"]["error"] is None
    assert results["huge"]["error"]["code"] == "request_too_large"
    assert server.times("huge") == []  # over the limit by either count: never sent
