"""batchrun.pacing.calibrate on explicit evidence: each server's own rule (written here, not
batchrun's)
charges prose, Chinese and code; the calibration sees only what the server says."""

from __future__ import annotations

import itertools
import math
import random

from batchrun.pacing.calibrate import CHARS, TOKENS, Calibration, Learned, Source, Visible
from batchrun.policy.request import Request
from batchrun.policy.sizing import size_of
from tests.helpers.charging import CHINESE, PROSE, by_chars, refusal

CODE = ('{"id": 12345, "name": "widget", "tags": ["a", "b"], "price": 19.99}\n'
        "def f(x):\n    return [i * i for i in range(x) if i % 2]\n")


def request(text: str, max_tokens: int = 20) -> tuple[Visible, dict[str, object]]:
    body = {"model": "gpt-4o-mini", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}
    return size_of(Request(1, "r", "/v1/chat/completions", body), 0).visible, body


def sample(rng: random.Random, kinds: tuple[str, ...] = (CHINESE,)) -> tuple[Visible, dict]:
    text = rng.choice(kinds)
    start = rng.randrange(len(text) // 2)
    return request((text * 3)[start:start + rng.randint(40, 200)], rng.randint(10, 40))


def test_without_evidence_it_charges_our_own_count() -> None:
    visible, _ = request(CHINESE)
    assert Calibration().charge(visible) == visible.own == max(visible.chars,
                                                               visible.tokens) + 20


def test_usage_from_a_server_that_bills_what_it_counts_converges_within_the_margin() -> None:
    """Chinese prose on a characters/4 server: about half of tiktoken's count."""
    rng = random.Random(1)
    cal = Calibration()
    for _ in range(5):
        visible, body = sample(rng)
        cal.observe(Source.USAGE, visible, by_chars(body) - visible.output)
    for _ in range(50):
        visible, body = sample(rng)
        server = by_chars(body)
        assert visible.own > 1.5 * server  # what we charged before: far too much
        assert server <= cal.charge(visible) <= server * 1.05


def test_one_429_corrects_a_usage_that_is_not_what_the_limiter_counts() -> None:
    """OpenAI bills tiktoken's count but rate-limits a characters estimate: usage says
    tiktoken, the 429's "Requested R" says what the limiter charged, and R rules."""
    rng = random.Random(2)
    cal = Calibration()
    for _ in range(20):
        visible, _ = sample(rng)
        cal.observe(Source.USAGE, visible, visible.tokens)
    visible, body = sample(rng)
    assert cal.charge(visible) > 1.5 * by_chars(body)
    cal.observe(Source.EXACT, visible, by_chars(body))
    assert cal.source is Source.EXACT
    for _ in range(30):
        visible, body = sample(rng)
        assert by_chars(body) <= cal.charge(visible) <= by_chars(body) * 1.05


def test_mixed_text_tells_a_characters_server_from_a_tokenizing_one() -> None:
    """Prose, Chinese and code differ in tokens per character: only the right basis fits all."""
    kinds = (CHINESE, CODE, PROSE)
    for rule in ("chars", "tokens"):
        rng = random.Random(3)
        cal = Calibration()

        def server(visible: Visible, body: dict[str, object], rule: str = rule) -> int:
            return by_chars(body) if rule == "chars" else visible.tokens + visible.output

        for _ in range(12):
            visible, body = sample(rng, kinds)
            cal.observe(Source.EXACT, visible, server(visible, body))
        for _ in range(60):
            visible, body = sample(rng, kinds)
            assert server(visible, body) <= cal.charge(visible) <= server(visible, body) * 1.06


def test_a_server_that_changes_its_accounting_mid_run_is_followed() -> None:
    rng = random.Random(4)
    cal = Calibration()
    for _ in range(20):
        visible, body = sample(rng)
        cal.observe(Source.EXACT, visible, by_chars(body, 4))
    # The server now counts a token per three characters: its first 429s say so. One is
    # enough not to under-charge; a few more and the old figures are forgotten.
    for seen in range(1, 7):
        visible, body = sample(rng)
        cal.observe(Source.EXACT, visible, by_chars(body, 3))
        ours = server = 0
        for _ in range(30):
            visible, body = sample(rng)
            assert by_chars(body, 3) <= cal.charge(visible)
            ours, server = ours + cal.charge(visible), server + by_chars(body, 3)
        assert seen < 5 or ours <= server * 1.05  # the limit's share admitted: >= 95 %


def test_charges_another_client_caused_still_teach_the_exact_charge() -> None:
    """429s that another client on the key provoked still state what OUR request costs: the
    fit does not move however many of them come."""
    rng = random.Random(5)
    cal = Calibration()
    for _ in range(40):
        visible, body = sample(rng)
        cal.observe(Source.EXACT, visible, by_chars(body))
    visible, body = sample(rng)
    assert by_chars(body) <= cal.charge(visible) <= by_chars(body) * 1.05


def test_implausible_figures_are_not_evidence() -> None:
    visible, _ = request(PROSE)
    cal = Calibration()
    cal.observe(Source.EXACT, visible, 0)  # "Requested 0"
    cal.observe(Source.EXACT, visible, visible.own * 50)  # another request's figure
    cal.observe(Source.USAGE, visible, 0)
    assert cal.source is None and cal.charge(visible) == visible.own


def test_only_a_per_minute_token_refusal_states_the_charge() -> None:
    """A TPM 429 (and a too-large refusal) says what this request costs; a requests-per-minute
    429 says "Requested 1" of another unit, a per-day one counts a day, and flex's "resource
    unavailable" says nothing about our accounting: none of those is evidence."""
    assert refusal(
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        "Limit 200000, Used 199000, Requested 1,234. Please try again in 1.5s."
    ).server_requested_tokens == 1234
    assert refusal(
        "Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
        "Limit 2000, Requested 3030. The input or output tokens must be reduced."
    ).server_requested_tokens == 3030
    for message in (
        "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in 120ms.",
        "Rate limit reached for gpt-4o-mini in organization org-x on tokens per day (TPD): "
        "Limit 2000000, Used 1999000, Requested 2000. Please try again in 7m12s.",
        "Resource unavailable: the flex tier is busy. Please try again later.",
    ):
        assert refusal(message).server_requested_tokens is None


def test_what_is_kept_for_the_ledger_is_the_prompts_charge_by_its_basis() -> None:
    """For the ledger: Chinese prose on a characters/4 server is charged 1 x its characters
    estimate (about 40 % of tiktoken's count); the output is not in it."""
    rng = random.Random(6)
    cal = Calibration()
    assert cal.learned() is None
    for _ in range(20):
        visible, body = sample(rng)
        cal.observe(Source.EXACT, visible, by_chars(body))
    learned = cal.learned()
    assert learned is not None and learned.basis == CHARS and abs(learned.k - 1) < 0.05
    assert Learned.parse(learned.text()) == learned


def test_an_earlier_versions_whole_charge_ratio_is_not_read_as_a_prompts() -> None:
    """Ledgers and Redis written before kept a bare ratio of the whole charge: dropped."""
    for stored in ("0.55", b"0.55", 0.55, "", None, "chars:nan", "chars:100", "words:1.0",
                   b"\xff"):
        assert Learned.parse(stored) is None
    assert Learned.parse(b"tokens:0.9") == Learned(TOKENS, 0.9)


def test_it_starts_from_the_learned_ratio_and_this_runs_429s_overrule_it() -> None:
    """The ledger's ratio (an earlier run's, another host's) is the charge from the first
    request: usage that is not what the limiter counts (OpenAI bills tiktoken's count) does not
    undo it; this run's own 429 figures, which are exact, do."""
    rng = random.Random(7)
    cal = Calibration()
    cal.start(Learned(CHARS, 1.0))
    visible, body = sample(rng)
    assert cal.charge(visible) == round(visible.chars * 1.03) + visible.output
    assert cal.learned() == Learned(CHARS, 1.0)
    for _ in range(10):
        visible, body = sample(rng)
        cal.observe(Source.USAGE, visible, visible.tokens)
    assert cal.charge(visible) == round(visible.chars * 1.03) + visible.output
    for _ in range(5):
        visible, body = sample(rng)
        cal.observe(Source.EXACT, visible, by_chars(body, per_token=2))
    for _ in range(20):
        visible, body = sample(rng)
        assert by_chars(body, per_token=2) <= cal.charge(visible) <= 1.1 * by_chars(
            body, per_token=2) + 1


def test_a_learned_ratio_that_is_not_plausible_is_not_started_from() -> None:
    visible, _ = request(CHINESE)
    for k in (0.0, -1.0, math.nan, math.inf, 100.0):
        cal = Calibration()
        cal.start(Learned(CHARS, k))
        assert cal.charge(visible) == visible.own and cal.learned() is None


def test_a_ratio_learned_on_one_kind_of_request_does_not_under_admit_another() -> None:
    """The ratio the ledger keeps (for the next run, another host, `estimate`) is the prompt's
    alone: one learned on Chinese prose with max_tokens 20 (the server charges about half our
    count of it) must not admit an English request with max_tokens 2000 at half its output."""
    rng = random.Random(8)
    learned = Calibration()
    for _ in range(20):
        visible, body = sample(rng)
        learned.observe(Source.EXACT, visible, by_chars(body))
    kept = learned.learned()
    assert kept is not None
    next_run = Calibration()
    next_run.start(kept)
    for text in (PROSE * 8, CODE * 4, CHINESE):
        visible, body = request(text, max_tokens=2000)
        assert next_run.charge(visible) >= by_chars(body)


def test_the_basis_does_not_flip_with_noise_when_both_explain_the_charges_alike() -> None:
    # Short, even prompts ("question 7"): the characters estimate and tiktoken's count explain
    # the server's charge about equally well. The better fit then changed with every answer's
    # noise, and each change of basis was a write of the learned accounting to the ledger or
    # Redis (against a Redis that had stopped answering: a new connection each time).
    rng = random.Random(7)
    cal = Calibration()
    bases = []
    for _ in range(60):
        tokens = rng.randint(8, 12)
        chars = tokens + rng.choice((-1, 0, 1))
        cal.observe(Source.USAGE, Visible(chars, tokens, 20), (chars + tokens) / 2)
        learned = cal.learned()
        if learned is not None:
            bases.append(learned.basis)
    changes = sum(a != b for a, b in itertools.pairwise(bases))
    assert changes <= 1, bases


def test_after_a_too_large_refusal_small_requests_are_charged_as_the_server_does() -> None:
    """Bench cell T: "Request too large ... Requested 3030" (120 characters and max_tokens 3000
    on a characters/4 server) is the one exact figure; the 18 small requests after it ("word "
    x 11, max_tokens 20) cost the server 34 each. A 1 % margin on a 14-token prompt rounded up
    to a whole token charged 35: 3 % of the taught limit, every request."""
    big, big_body = request("x" * 120, max_tokens=3000)
    cal = Calibration()
    cal.observe(Source.EXACT, big, by_chars(big_body))
    small, small_body = request("word " * 11)
    assert by_chars(small_body) == 34
    assert cal.charge(small) == 34


def test_the_margin_is_whole_tokens_where_it_is_at_least_half_a_token() -> None:
    """The margin rounds to the nearest whole token, the fit's own prediction up: a server's
    charge is whole tokens, and a hundredth of a 14-token prompt cannot be charged without
    charging a whole token (7 %)."""
    cal = Calibration()
    cal.observe(Source.EXACT, Visible(1000, 1000, 0), 1000)  # k = 1 on characters
    assert cal.charge(Visible(14, 14, 0)) == 14
    assert cal.charge(Visible(1000, 1000, 0)) == 1010  # 1 %: ten tokens, kept
    half = Calibration()
    half.observe(Source.EXACT, Visible(1000, 1000, 0), 1030)  # k = 1.03
    assert half.charge(Visible(14, 14, 0)) == 15  # 14.42 rounds up, whatever the margin
    assert half.charge(Visible(50, 50, 0)) == 52  # 51.5 (52.02 with the margin) up to 52
    assert half.charge(Visible(1000, 1000, 0)) == 1040  # 1030 and its 10.3 of margin
