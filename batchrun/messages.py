"""Every sentence a user reads about how a job ended and what to do next: the stop messages and
their exit codes, the summary lines, the resume commands. Pure functions of typed inputs (a
`Stop`, a job's numbers, the `--json` summary), so the CLI (cli/) and the library's
`job.message` (api/) say the same thing in the same words. Nothing here prints, and nothing
here imports what sits above it (api/, cli/, display/).

The Batch API path words its own stops (backends/batch/words.py, handed over in `Stop.said`):
it runs below this module, which it could not import without an import back up a layer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from batchrun.backends.stop import Stop
from batchrun.errors import (
    ApiRefused,
    BatchrunError,
    DailyLimitReached,
    Interrupted,
    SpendCapReached,
    StateError,
    printable,
    redact,
    redact_urls,
)
from batchrun.files.ledger import fmt_wait
from batchrun.policy.prices import PRICES_AS_OF
from batchrun.policy.spend import suggested_cap
from batchrun.policy.stopkind import StopKind

INTERRUPTED_EARLY = "Interrupted before anything was sent."


# -- how a run ended ------------------------------------------------------------------------------


def shown(message: str) -> str:
    """A message as a user is shown it, wherever it came from: every URL's credentials masked
    and no control character left (nothing else is changed)."""
    return printable(redact_urls(message))


def abandoned_note(abandoned: int) -> str:
    """What a message says of requests in flight given up at a stop ("" when none was)."""
    if not abandoned:
        return ""
    one = abandoned == 1
    return (f" {abandoned:,} request{'' if one else 's'} in flight got no answer (abandoned "
            f"at the stop, or timed out; the API may have billed {'it' if one else 'them'}); "
            f"resuming sends {'it' if one else 'them'} again.")


def phrase(stop: Stop, output: str, resume: str, key_env: str) -> BatchrunError:
    """The message and exit code the user sees. `resume`: the command that continues the job."""
    if stop.said is not None:
        return stop.said
    done = f"{stop.done:,} of {stop.total:,} requests done"
    # Said before the resume command, never after it: run on from the command, the count read
    # (and was copied) as its arguments.
    note = abandoned_note(stop.abandoned)
    if stop.kind is StopKind.DAILY:
        said = f" (The server said: {stop.server_message})" if stop.server_message else ""
        wait = fmt_wait(stop.until_reset or dt.timedelta())
        return DailyLimitReached(
            f"{stop.budget}. {done}.{said}{note} Resume after 00:00 UTC (in {wait}) with: "
            f"{resume}")
    if stop.kind is StopKind.COST:
        return SpendCapReached(spend_cap_reached(stop, done, note, resume))
    if stop.kind is StopKind.REFUSED:
        return ApiRefused(
            f"The API refused the request: {stop.server_message} ({stop.code}, HTTP "
            f"{stop.status}).{note} Check ${key_env}, the account's billing and quota, then "
            f"continue with: {resume} (the {stop.done:,} finished results in {output} are kept).")
    if stop.kind is StopKind.NO_NETWORK:
        return StateError(
            f"Cannot reach {stop.host}: no request has got through and every attempt failed "
            f"to connect (last: {stop.server_message}). Nothing was recorded as failed; "
            f"{done}.{note} Check the network, the proxy settings and the base URL, then "
            f"continue with: {resume}")
    if stop.kind is StopKind.INPUT_CHANGED:
        return StateError(
            f"The input {stop.input} changed while the job ran ({stop.change}); nothing read "
            f"after the change was sent. {done}, kept in {output}.{note} Put the input back "
            f"as it was, with its modification time (cp -p), and continue with: {resume} (or add "
            "--force to go on with it as it is now; ids that already have a result are not "
            "sent again).")
    if stop.kind is StopKind.INCOMPLETE:
        return StateError(
            f"The job is not finished: {done}, and reading {stop.input} again gave none of the "
            f"rest.{note} Nothing is lost: make sure nothing is changing the file, then continue "
            f"with: {resume}")
    if stop.kind is StopKind.OUTPUT:
        lost = ""
        if stop.unwritten:
            lost = (f" {stop.unwritten:,} answer{'s' if stop.unwritten != 1 else ''} could not "
                    "be written (the API billed them; resuming sends them again).")
        return StateError(f"{stop.server_message} {done}, kept in {output}.{lost}{note} Then "
                          f"continue with: {resume}")
    if stop.kind is StopKind.STATE:
        flight = (abandoned_note(stop.abandoned).strip() if stop.abandoned else
                  "The requests in flight were finished and written.")
        return StateError(f"{stop.server_message} {done}, kept in {output}. {flight} Once it "
                          f"answers again, continue with: {resume}")
    return Interrupted(
        f"Interrupted. {stop.done:,} of {stop.total:,} requests are done and kept in {output}."
        f"{note} Continue with: {resume}")


def spend_cap_reached(stop: Stop, done: str, note: str, resume: str) -> str:
    """The paused-cost sentence: spent, cap, and the command that goes on under a larger one."""
    larger = suggested_cap(stop.cap_usd, stop.spent_usd, stop.need_usd)
    return (f"Spend cap reached: {_usd(stop.spent_usd)} spent of the --max-cost "
            f"{_usd(stop.cap_usd)} at list prices of {PRICES_AS_OF}, and the next request could "
            f"pass it. {done}.{note} Continue with a larger cap: {resume} --max-cost {larger:.2f}")


def _usd(amount: float) -> str:
    """Dollars to the cent's hundredth, or to the millionth below a cent (a test's cap)."""
    return f"${amount:,.4f}" if amount >= 0.01 or amount == 0 else f"${amount:.6f}"


def failed_again(failed: int, job: str) -> str:
    """Requests that failed for good, and the command that sends them again."""
    return (f"{failed:,} failed for good: each has its error in the results. "
            f"Send them again with: batchrun resume {job} --retry-failed")


def ending(stopped: BatchrunError | None, failed: int, job: str) -> str:
    """The one sentence of how a run ended, as `job.message`, the CLI's last line and its
    `--json` "message" all say it: why it stopped early, else the failures to send again, else
    nothing (every request has a result, none failed)."""
    if stopped is not None:
        return shown(stopped.message)
    return failed_again(failed, job) if failed else ""


def finished(job: str, output: str, done: int, total: int, failed: int) -> str:
    """Nothing left to send: what to say, and how to send the failures again."""
    again = (f" Send the failed ones again with: batchrun resume {job} --retry-failed"
             if failed else "")
    return (f"Job {job} is finished: {done:,} of {total:,} requests have a result "
            f"({failed:,} failed). Results: {output}.{again}")


def state_unavailable_next(url: str | None) -> str:
    """What to do when the shared state does not answer before anything was sent; `url`: the
    --state URL as shown (credentials masked)."""
    shown_url = url if url is not None else "the --state URL"
    return (f"Nothing was sent. Check that Redis runs and answers there (redis-cli -u "
            f"{shown_url} ping; the URL comes from --state or $BATCHRUN_STATE), then run the "
            "same command again.")


def internal_error(exc: BaseException) -> str:
    """A bug, not a user error, in one line. The job is recorded as crashed (the job never
    marks itself done on an exception), so nothing finished is lost."""
    return printable(
        f"internal error: {type(exc).__name__}: {redact(str(exc))}. This is a bug in "
        "batchrun; results written so far are kept and `batchrun resume` continues the "
        "job. Run again with BATCHRUN_DEBUG=1 to see the traceback, and please report it.")


# -- the summary of a run -------------------------------------------------------------------------


def count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def usd(cost: float | None) -> str:
    return "no list price" if cost is None else f"${cost:,.4f}"


def tokens_in(tokens: dict[str, Any]) -> str:
    """'1,500 in (1,408 cached)': what the server served from its prompt cache, billed at the
    cached price, is a part of the prompt tokens."""
    cached = tokens.get("cached_input", 0)
    return f"{tokens['input']:,} in" + (f" ({cached:,} cached)" if cached else "")


def describe_endpoint(e: dict[str, Any]) -> str:
    """One endpoint's line of the final summary (--endpoints)."""
    cost = "cost unknown" if e["cost_usd"] is None else f"${e['cost_usd']:,.4f}"
    out = "".join(f" · out for {model}: {why}" for model, why in e["out"].items())
    return (f"{count(e['requests'], 'request')} · {tokens_in(e['tokens'])}, "
            f"{e['tokens']['output']:,} out · {count(e['rate_limited_429'], '429')} · "
            f"{cost}{out}")


def _cost(s: dict[str, Any], batch: bool) -> str:
    unpriced = ", ".join(s["unpriced_models"])
    if s["cost_usd"] is None:
        return f"unknown (no list price for {unpriced})"
    return (f"${s['cost_usd']:,.4f} at list prices of {s['prices_as_of']}"
            + (" (Batch API requests at half of them)" if batch else "")
            + (f", plus {unpriced}, which has no list price" if unpriced else ""))


def from_cache(cache: dict[str, Any] | None) -> str:
    """' · 270 from the cache (saved $0.0026)': answers the job did not pay for (#25)."""
    if not cache or not cache["answered"]:
        return ""
    return f" · {cache['answered']:,} from the cache (saved {usd(cache['saved_usd'])})"


def summary_lines(s: dict[str, Any], output: Path, batch: bool = False) -> list[str]:
    """The summary a run ends with (`s`: the `--json` summary); `batch`: some requests went by
    the Batch API (at half price)."""
    r = s["requests"]
    lines = [
        f"{r['ok']:,} ok · {r['failed']:,} failed"
        + (f" ({r['bad_lines']:,} bad input lines)" if r["bad_lines"] else "")
        + from_cache(s.get("cache"))
        + (f" · {r['already_done']:,} done before" if r["already_done"] else "")
        + (f" ({r['failed_before']:,} of them failed)" if r["failed_before"] else "")
        + (f" · {r['not_done']:,} not done" if r["not_done"] else ""),
        f"tokens: {tokens_in(s['tokens'])}, {s['tokens']['output']:,} out · "
        f"cost {_cost(s, batch)}",
        f"{s['wall_seconds']:,.1f}s · {s['achieved']['requests_per_min']:,.0f} req/min · "
        f"{s['achieved']['tokens_per_min']:,.0f} tok/min · {s['rate_limited_429']:,} 429s",
        f"results: {output}",
    ]
    sync, batch_way = s["via"]["sync"], s["via"]["batch"]
    if batch_way["requests"]:  # --via batch or auto: what went where, at which price
        lines.insert(3, f"via: {sync['requests']:,} sync ({usd(sync['cost_usd'])}) · "
                        f"{batch_way['requests']:,} Batch API ({usd(batch_way['cost_usd'])}, "
                        "half price)")
    if r["failed"] or r["failed_before"]:
        lines.append(failed_again(r["failed"] + r["failed_before"], s["job"]))
    if r["bad_lines"]:
        # Sent again as they are, bad lines fail again: the input must change first.
        lines.append(f"{r['bad_lines']:,} of them are bad input lines (error code "
                     "invalid_request_line): fix those lines in the input, then run "
                     f"batchrun resume {s['job']} --retry-failed --force")
    lines += [f"  {name}: {describe_endpoint(e)}" for name, e in s.get("endpoints", {}).items()]
    return lines


# -- the commands' own lines ----------------------------------------------------------------------


def nothing_to_resume(retry_failed: bool) -> str:
    return f"No {_unfinished(retry_failed)} to resume. Start one with: batchrun submit JOBS.jsonl"


def resuming(job: str, retry_failed: bool, input_: str, output: str) -> str:
    return (f"Resuming {job}, the most recently updated {_unfinished(retry_failed)} "
            f"({input_} → {output}).")


def _unfinished(retry_failed: bool) -> str:
    return "unfinished job or job with failed requests" if retry_failed else "unfinished job"


def damaged_manifest(path: Path, reason: str) -> str:
    return (f"skipped the damaged job manifest {path}: {reason}. "
            f"`batchrun resume {path.stem}` says how to recover that job.")


def cancelled(job: str, batches: int, dropped: int, force: bool) -> str:
    """`batchrun cancel`: what was cancelled, and how to collect what the batches finished."""
    unsent = f"; {dropped} part{'s' if dropped != 1 else ''} not yet submitted will not be" if (
        dropped) else ""
    gone = " (with --force, any the API does not know under this key count as gone)" if (
        force and batches) else ""
    return (f"Cancelled {batches} batch{'es' if batches != 1 else ''} of job "
            f"{job}{gone}{unsent}. Collect the results they finished with: "
            f"batchrun resume {job} (the rest are recorded as failed, "
            "batch_cancelled; resume --retry-failed sends them again).")


def forget_refused(job: str) -> str:
    return (f"job {job} has batches on the server that nothing would collect or "
            f"cancel once it is forgotten (they run on, and are billed). Collect them with "
            f"batchrun resume {job}, or cancel them with batchrun cancel "
            f"{job}, then forget it.")


def forgot(job: str, output: str) -> str:
    return f"Forgot job {job}. Its results stay in {output}."


def status_state_down(message: str) -> str:
    """`status --state URL` when Redis does not answer: what to do, and how to see this host's
    own ledger meanwhile."""
    return (f"{message} Check that Redis runs and answers there, then run it again; "
            "`batchrun status` without --state (and with $BATCHRUN_STATE unset) shows this "
            "host's own ledger meanwhile.")


def not_collected(message: str) -> str:
    return f"Not collected now: {printable(message)}"
