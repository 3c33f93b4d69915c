"""The one error tree. The CLI turns these into a message and an exit code in one place.

    BatchrunError                 exit 1   anything batchrun understands
    ├── ApiCallFailed                      the Batch API refused a files or batches call
    ├── InputError                exit 2   bad input file, bad option; nothing was sent
    │   └── BadLinesError                  bad input lines under --on-bad-line fail
    ├── DailyLimitReached         exit 3   today's token/request budget is spent; resume later
    ├── ApiRefused                exit 4   bad key, no credit or quota; checkpoint kept
    ├── StateError                exit 5   local state or I/O failed (disk full, output damaged,
    │   │                                  ledger unusable); checkpoint kept: fix it, run again
    │   ├── InputChanged                   the input file changed while it was read
    │   ├── OutputWriteFailed              (checkpoint) the output refused a line
    │   ├── DamagedManifest                (jobstore) a job's manifest cannot be read
    │   └── SharedStateError               (state) --state redis:// stopped answering
    └── Interrupted               exit 130 Ctrl-C; checkpoint kept

Exceptions outside this tree are control flow that never reaches the user (each says so).
Every message says what happened and what to do next. None may contain the API key: messages
that quote a server's words pass them through `redact` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_INPUT = 2
EXIT_DAILY = 3
EXIT_REFUSED = 4
EXIT_STATE = 5
EXIT_INTERRUPTED = 130

# sk-..., sk-proj-..., bearer tokens: anything that looks like a secret. Azure's keys are 32 hex
# digits, which is also how many servers write request ids, so that shape is separate.
_TOKEN_LIKE = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})")
_HEX_KEY = re.compile(r"\b[0-9a-f]{32}\b")
# "scheme://user:password@": everything up to the last '@' of a URL-shaped token, since an
# unencoded '/', '?' or '#' in a password hides where the authority really ends. Possessive, so a
# text of many "://" without spaces costs one pass, not one per "://".
_URL_TAIL = re.compile(r"://([^\s'\"<>]*+)")
# A query parameter whose name says it holds a credential (api-key, access_token, sig, password…):
# its value is masked whatever its shape. Others (api-version) stay: they say where a call went.
_SECRET_PARAM = re.compile(
    r"([?&;][^=&#;?]*?(?:key|token|secret|passw|pwd|sig|auth|cred)[^=&#;?]*=)[^&#;]*", re.I)
# Terminal escape sequences (CSI, OSC, 8-bit CSI), then any other control or format character
# (C0 but newline and tab, DEL, C1, bidirectional overrides, zero-width characters).
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: cursor moves, colours, screen clears
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS…
)
_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


# Real keys are 32 characters or more. Shorter ones are the placeholders local servers accept
# ("EMPTY" for vLLM, "ollama", "test", "a"): words, not secrets. Replacing them would mangle any
# text holding the word ("ch[redacted]t.completion" for key "a") and protect nothing.
MIN_SECRET_LEN = 8


def _mask_url(match: re.Match[str]) -> str:
    """A URL's credentials: its userinfo, its secret-named parameters and its fragment (where
    keys travel in links, since it never reaches a server's logs)."""
    tail = match.group(1)
    if "@" in tail:
        tail = "***@" + tail.rpartition("@")[2]
    head, fragment, _ = tail.partition("#")
    return "://" + _SECRET_PARAM.sub(r"\1***", head) + (fragment and "#…")


def redact_urls(text: str) -> str:
    """The credentials of every URL in `text` masked (`_mask_url`), and nothing else changed:
    safe for any message, also one that quotes paths or ids."""
    return _URL_TAIL.sub(_mask_url, text) if "://" in text else text


def without_userinfo(url: str) -> str:
    """The URL with any `user:password@` shown as `***@`: for messages, never for sending.
    Everything up to the last '@' is masked, since a password holding an unencoded '/', '?' or
    '#' hides where the authority ends. Plain string work, so it cannot fail on a malformed URL a
    server handed us."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return scheme + sep + "***@" + rest.rpartition("@")[2]


def redact(text: str, *secrets: str | None, hex_keys: bool = True) -> str:
    """Remove the secrets (those long enough to be secrets), anything key-shaped and any
    credentials in a URL from text a server or the OS handed us. Only for error text: never apply
    it to a model's answer. `hex_keys=False` keeps 32-hex-digit words (request ids)."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LEN:
            text = text.replace(secret, "[redacted]")
    text = _TOKEN_LIKE.sub("[redacted]", text)
    if hex_keys:
        text = _HEX_KEY.sub("[redacted]", text)
    return redact_urls(text)


def printable(text: str) -> str:
    """Text a server wrote, safe to show on a terminal: escape sequences and control characters
    removed (newlines and tabs kept), so it cannot move the cursor, retitle the window, write to
    the clipboard or reorder what it shows."""
    if text.isprintable():
        return text
    return _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", text))


class BatchrunError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class BadLine:
    """One input line that cannot become a request."""

    line_no: int
    custom_id: str | None
    reason: str

    @property
    def output_id(self) -> str:
        """The custom_id its failed output line carries."""
        return self.custom_id or f"line-{self.line_no}"

    def describe(self) -> str:
        where = f"line {self.line_no}"
        if self.custom_id is not None:
            where += f" (id {self.custom_id!r})"
        return f"{where}: {self.reason}"


class ApiCallFailed(BatchrunError):
    """The API refused a files or batches call for a reason retrying cannot cure."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class InputError(BatchrunError):
    exit_code = EXIT_INPUT


class BadLinesError(InputError):
    """The input has bad lines and --on-bad-line fail is in force: nothing was sent."""

    SHOWN = 20

    def __init__(self, path: str, bad: list[BadLine], total_bad: int) -> None:
        plural = "s" if total_bad != 1 else ""
        lines = [f"{path}: {total_bad:,} bad line{plural}; nothing was sent."]
        lines += [f"  {b.describe()}" for b in bad[: self.SHOWN]]
        if total_bad > self.SHOWN:
            lines.append(f"  … and {total_bad - self.SHOWN:,} more")
        lines.append(
            "Fix these lines, or run with --on-bad-line skip to record them as failed and go on."
        )
        super().__init__("\n".join(lines))
        self.bad = bad
        self.total_bad = total_bad


class DailyLimitReached(BatchrunError):
    exit_code = EXIT_DAILY


class SpendCapReached(BatchrunError):
    """--max-cost: the next request could pass the job's spend cap (a budget, as the daily
    limit is: exit 3, resumable with a larger cap)."""

    exit_code = EXIT_DAILY


class ApiRefused(BatchrunError):
    exit_code = EXIT_REFUSED


class StateError(BatchrunError):
    """Local state or I/O failed: the disk, the output file, the ledger. Not the requests' fault,
    so scripts can tell "fix the machine and run again" from "look at the failed lines"."""

    exit_code = EXIT_STATE


class InputChanged(StateError):
    """The input changed while batchrun read it, so lines read since may not be the ones it
    checked. Raised before any of them is used; the engine turns it into a stop of the job."""

    def __init__(self, path: str, change: str) -> None:
        super().__init__(
            f"{path} changed while batchrun read it ({change}); nothing was sent. Run the "
            "command again once nothing is writing to the file.")
        self.path = path
        self.change = change


class Interrupted(BatchrunError):
    exit_code = EXIT_INTERRUPTED
