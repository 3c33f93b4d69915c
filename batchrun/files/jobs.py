"""Reading job files: three line shapes in, one validated Request (or a BadLine) out per line.

Shapes (docs/design.md): OpenAI Batch API lines; chat lines `{"id", "messages", ...body}`;
prompt lines `{"id", "prompt"}`. The reader streams: it holds one line at a time plus the set of
ids seen.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import BadLine, BadLinesError, InputChanged, InputError
from batchrun.policy.request import CHAT_URL, EMBEDDINGS_URL, Request
from batchrun.policy.tiers import family

SUPPORTED_URLS = (CHAT_URL, EMBEDDINGS_URL)
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# A single request can't usefully exceed this: the largest context window is ~1M tokens (~4 MB).
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_ID_CHARS = 512
MAX_DEPTH = 64
_BOM = b"\xef\xbb\xbf"
# The reader looks at the file again after this many lines (or bytes), before it uses any of
# them: two system calls per chunk, and a change is never more than one chunk late.
CHUNK_LINES = 256
CHUNK_BYTES = 1024 * 1024


class _Bad(Exception):
    """Internal: the reason a line is bad; becomes a BadLine."""


def _positive_int(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"{key} must be a positive integer, got {orjson.dumps(value).decode()[:40]}")


def _check_part(where: str, part: Any) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _Bad(f"{where} must be an object with a type")
    kind = part["type"]
    if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
        raise _Bad(f"{where}.{kind} must be a string")
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise _Bad(f'{where}.image_url must be an object like {{"url": "https://…"}}')
        if not isinstance(image.get("detail", "auto"), str):
            raise _Bad(f"{where}.image_url.detail must be a string")


def _check_tool_calls(where: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _Bad(f"{where}.tool_calls must be a list of tool call objects")
    for k, call in enumerate(calls):
        if not isinstance(call, dict):
            raise _Bad(f"{where}.tool_calls[{k}] must be an object with a function")
        fn = call.get("function", {})
        if not isinstance(fn, dict) or not all(
            isinstance(fn.get(key, ""), str) for key in ("name", "arguments")
        ):
            raise _Bad(f"{where}.tool_calls[{k}].function must be an object whose name and "
                       "arguments are strings")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise _Bad("messages must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _Bad(f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise _Bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        if "name" in message and not isinstance(message["name"], str):
            raise _Bad(f"{where}.name must be a string")
        if "tool_calls" in message:
            _check_tool_calls(where, message["tool_calls"])
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
                continue
            raise _Bad(f"{where} has no content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise _Bad(f"{where}.content must be a string or a non-empty list of parts")
        for j, part in enumerate(content):
            _check_part(f"{where}.content[{j}]", part)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Is `value` nested deeper than `limit`? Iterative: a hostile line cannot overflow it."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in item)
    return False


def _check_embedding_input(inp: Any) -> None:
    if isinstance(inp, str):
        if inp:
            return
        raise _Bad("input must not be empty")
    ok = isinstance(inp, list) and bool(inp) and (
        all(isinstance(x, str) and x for x in inp)
        or all(isinstance(x, int) and not isinstance(x, bool) for x in inp)
        or all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in inp)
    )
    if not ok:
        raise _Bad("input must be a string, a list of strings, or token arrays")


def _check_body(url: str, body: dict[str, Any]) -> None:
    if not isinstance(body.get("model"), str) or not body["model"].strip():
        raise _Bad("model must be a non-empty string")
    if body.get("stream"):
        raise _Bad("stream: true is not supported in a batch job; remove it")
    # Counted and charged before it is sent, whatever the endpoint.
    for key in ("max_tokens", "max_completion_tokens", "n"):
        _positive_int(body, key)
    if url == EMBEDDINGS_URL:
        if "input" not in body:
            raise _Bad("an embeddings request needs input")
        _check_embedding_input(body["input"])
        return
    _check_messages(body.get("messages"))


def _take_id(obj: dict[str, Any], key: str, line_no: int) -> str:
    if key not in obj:
        return f"line-{line_no}"
    value = obj[key]
    if not isinstance(value, str) or not value:
        raise _Bad(f"{key} must be a non-empty string, got {orjson.dumps(value).decode()[:40]}")
    if len(value) > MAX_ID_CHARS:
        raise _Bad(f"{key} is {len(value)} characters long; the most is {MAX_ID_CHARS}")
    return value


def parse_line(obj: Any, line_no: int, default_model: str) -> Request:
    """Turn one decoded JSON line into a Request, or raise _Bad with the reason."""
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    if _depth_exceeds(obj, MAX_DEPTH):
        raise _Bad(f"the line is nested more than {MAX_DEPTH} levels deep; no API request is")
    if "custom_id" in obj or "body" in obj or "url" in obj:
        custom_id = _take_id(obj, "custom_id", line_no)
        if obj.get("method", "POST") != "POST":
            raise _Bad(f"method must be POST, got {obj.get('method')!r}")
        url = obj.get("url")
        if url not in SUPPORTED_URLS:
            raise _Bad(f"url must be one of {', '.join(SUPPORTED_URLS)}, got {url!r}")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _Bad("body must be a JSON object")
        body = dict(body)
    elif "messages" in obj or "prompt" in obj:
        custom_id = _take_id(obj, "id", line_no)
        body = {k: v for k, v in obj.items() if k not in ("id", "prompt")}
        url = CHAT_URL
        if "prompt" in obj:
            if "messages" in obj:
                raise _Bad("a line has either prompt or messages, not both")
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise _Bad("prompt must be a non-empty string")
            body["messages"] = [{"role": "user", "content": obj["prompt"]}]
    elif "input" in obj:
        custom_id = _take_id(obj, "id", line_no)
        body = {k: v for k, v in obj.items() if k != "id"}
        url = EMBEDDINGS_URL
        fam = family(str(body.get("model", default_model)))
        if fam is not None and not fam.startswith("text-embedding"):
            raise _Bad(
                f"an embeddings line (id, input) needs an embeddings model, not {fam}: add "
                '"model": "text-embedding-3-small" to the line, or run with '
                "-m text-embedding-3-small"
            )
    else:
        raise _Bad(
            "unrecognised line: expected a Batch API line (custom_id, url, body), "
            "a chat line (id, messages), a prompt line (id, prompt) or an embeddings line "
            "(id, input)"
        )
    body.setdefault("model", default_model)
    _check_body(url, body)
    return Request(line_no=line_no, custom_id=custom_id, url=url, body=body)


def _open(path: Path) -> Any:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file. Check the path and try again.") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}).") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path} is a directory; give the path of a .jsonl file.")
    if not stat.S_ISREG(mode):
        raise InputError(
            f"{path} is not a regular file (a pipe or device); batchrun reads the file twice "
            "(check, then send), so save the input to a file first."
        )
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror}).") from None


class IdTracker:
    """Which lines find their id already taken by an earlier line.

    The checking pass holds every id (about 75 MB for a million); it records its verdicts, and
    the sending pass replays them holding none, so a run's memory does not grow with the file.
    """

    def __init__(self) -> None:
        self._seen: set[str] | None = set()
        self.duplicates: set[int] = set()  # lines whose id an earlier line took
        self.unnamed: set[int] = set()  # bad lines whose id an earlier line took

    def replay(self) -> IdTracker:
        again = IdTracker()
        again._seen, again.duplicates, again.unnamed = None, self.duplicates, self.unnamed
        return again

    def release(self) -> None:
        self._seen = None

    def claim(self, line_no: int, custom_id: str, bad: bool = False) -> bool:
        """Take the id for this line; False if an earlier line has it."""
        taken = self.unnamed if bad else self.duplicates
        if self._seen is None:
            return line_no not in taken
        if custom_id in self._seen:
            taken.add(line_no)
            return False
        self._seen.add(custom_id)
        return True


@dataclass(frozen=True, slots=True)
class Stamp:
    """What stat says of the input. A write moves its mtime, a rename over it its inode, so while
    these hold, the lines read are the ones checked. (A write of the same size within the file
    system's timestamp granularity, a few ms, of the first look could pass unseen.)"""

    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def change(self, path: Path) -> str | None:
        """How the file at `path` differs from this stamp now, in words; None if it does not."""
        try:
            now = Stamp.of(path.stat())
        except OSError:
            return "it was deleted or moved away"
        if (now.ino, now.dev) != (self.ino, self.dev):
            return "it was replaced by another file"
        if now.size != self.size:
            return f"its size went from {self.size:,} to {now.size:,} bytes"
        if now.mtime_ns != self.mtime_ns:
            return "it was rewritten in place: same size, a new modification time"
        return None


@dataclass(slots=True)
class Reading:
    """One pass over the input: the stamp the file must keep (None: the one it has when the pass
    opens it) and the bytes read so far."""

    stamp: Stamp | None = None
    offset: int = 0


def _chunk(f: Any, end: int | None, offset: int) -> tuple[list[bytes], bool]:
    """The next lines, up to `end`; and whether more may follow."""
    lines: list[bytes] = []
    size = 0
    while len(lines) < CHUNK_LINES and size < CHUNK_BYTES:
        raw = f.readline()
        if not raw or (end is not None and offset + size + len(raw) > end):
            return lines, False
        lines.append(raw)
        size += len(raw)
    return lines, True


def read_jobs(
    path: Path, default_model: str, ids: IdTracker | None = None, end: int | None = None,
    reading: Reading | None = None,
) -> Iterator[Request | BadLine]:
    """Stream the file: yield a Request or a BadLine per non-blank line, in order.

    `end`: stop at this byte offset (where the checking pass stopped), so lines appended while
    a job runs are never sent unchecked. The file is read a chunk at a time, and each chunk is
    used only once the file is seen to be as `reading.stamp` says: a change raises InputChanged
    before any line read after it is given. Also raises InputError for the file as a whole
    (missing, a directory, empty).
    """
    ids = ids or IdTracker()
    reading = reading or Reading()
    any_line = False
    line_no = 0
    with _open(path) as f:
        if reading.stamp is None:
            reading.stamp = Stamp.of(os.fstat(f.fileno()))
        more = True
        while more:
            chunk, more = _chunk(f, end, reading.offset)
            change = reading.stamp.change(path)
            if change is not None:
                raise InputChanged(str(path), change)
            for raw in chunk:
                line_no += 1
                reading.offset += len(raw)
                item = _item(raw, line_no, default_model, ids)
                if item is not None:
                    any_line = True
                    yield item
    if not any_line:
        raise InputError(
            f"{path} has no requests (it is empty or only blank lines). Put one JSON request "
            "per line in it, e.g. {\"id\": \"q1\", \"prompt\": \"Hello\"} (the README's "
            "Files section shows all four shapes)."
        )


def _item(raw: bytes, line_no: int, default_model: str, ids: IdTracker) -> Request | BadLine | None:
    """One line's request, or why it is bad; None for a blank line."""
    if line_no == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if len(raw) > MAX_LINE_BYTES:
        size = len(raw) / 1_000_000
        return BadLine(
            line_no, None,
            f"line is {size:.1f} MB; the most a request may be is "
            f"{MAX_LINE_BYTES // (1024 * 1024)} MB",
        )
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return BadLine(line_no, None, _json_reason(raw, exc))
    try:
        req = parse_line(obj, line_no, default_model)
    except _Bad as exc:
        # A bad line still claims its id, so the output never holds two lines for one id.
        guess = _guess_id(obj)
        if guess is not None and not ids.claim(line_no, guess, bad=True):
            guess = None
        return BadLine(line_no, guess, str(exc))
    if not ids.claim(line_no, req.custom_id):
        return BadLine(line_no, None, f"duplicate id {req.custom_id!r}; ids must be unique")
    return req


def _json_reason(raw: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as ude:
        return f"not valid UTF-8 (byte {ude.start + 1}); save the file as UTF-8"
    if b"\x00" in raw:
        return "contains a NUL byte; not valid JSON"
    return f"not valid JSON: {exc.msg} at column {exc.colno}"


def _guess_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        for key in ("custom_id", "id"):
            if isinstance(obj.get(key), str):
                return str(obj[key])
    return None


@dataclass(slots=True)
class InputReport:
    """What the checking pass found. Saved in the job's manifest, so a resume of an unchanged
    input does not read a million lines twice before its first request."""

    total: int = 0
    already_done: int = 0
    bad_total: int = 0
    bad: list[BadLine] = field(default_factory=list)
    models: dict[str, int] = field(default_factory=dict)
    ids: IdTracker = field(default_factory=IdTracker)
    size: int | None = None  # bytes checked: the sending pass reads no further
    stamp: Stamp | None = None  # the file as checked: the sending pass stops if it changes

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "size": self.size, "bad_total": self.bad_total,
            "mtime_ns": self.stamp.mtime_ns if self.stamp else None, "models": self.models,
            "bad": [[b.line_no, b.custom_id, b.reason] for b in self.bad],
            "duplicates": sorted(self.ids.duplicates), "unnamed": sorted(self.ids.unnamed),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], done: set[str]) -> InputReport:
        ids = IdTracker()
        ids.release()
        ids.duplicates, ids.unnamed = set(data["duplicates"]), set(data["unnamed"])
        # The output is this job's own: every id in it is one of the file's.
        return cls(total=data["total"], already_done=len(done), bad_total=data["bad_total"],
                   bad=[BadLine(*b) for b in data["bad"]], models=dict(data["models"]), ids=ids,
                   size=data.get("size"))


def check_input(path: Path, model: str, done: set[str] = frozenset()) -> InputReport:  # type: ignore[assignment]
    """Read the whole file once: count requests per model, collect bad lines. Sends nothing."""
    report = InputReport()
    reading = Reading()
    for item in read_jobs(path, model, report.ids, reading=reading):
        report.total += 1
        if isinstance(item, BadLine):
            report.bad_total += 1
            if len(report.bad) < BadLinesError.SHOWN:
                report.bad.append(item)
            report.already_done += item.output_id in done
        else:
            report.models[item.model] = report.models.get(item.model, 0) + 1
            report.already_done += item.custom_id in done
    report.ids.release()
    report.size, report.stamp = reading.offset, reading.stamp
    return report


def input_report(path: Path, model: str, done: set[str],
                 checked: dict[str, Any] | None) -> InputReport:
    """The checking pass, or the one an earlier run saved if the file still has the size and
    mtime it had then. The stamp the sending pass keeps is the file's now: a copy restored with
    its times (a new inode) is the file that was checked."""
    if checked is not None:
        try:
            now = Stamp.of(path.stat())
        except OSError:
            now = None  # checked again: the reader says what is wrong with the file
        if now is not None and (now.size, now.mtime_ns) == (checked.get("size"),
                                                            checked.get("mtime_ns")):
            report = InputReport.from_dict(checked, done)
            report.stamp = now
            return report
    return check_input(path, model, done)
