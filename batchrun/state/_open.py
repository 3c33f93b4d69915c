"""Opening the Redis state from the runner and from `status`, without importing its client
unless it is used."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun.files import ledger
from batchrun.files.ledger import utc_now
from batchrun.pacing.calibrate import Learned
from batchrun.state._url import StateUrl

if TYPE_CHECKING:
    from batchrun.state._redis import RedisState


KEY_VARIABLES = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")


async def connect(url: StateUrl, now_utc: Callable[[], dt.datetime] = utc_now,
                  keys: Iterable[str] = ()) -> RedisState:
    """`keys`: the API keys whose state may be read and written (names derive from them)."""
    from batchrun.state._redis import RedisState

    return await RedisState.connect(url, now_utc, keys=keys)


def caller_keys() -> list[str]:
    """The API keys this shell holds, as batchrun finds them: $OPENAI_API_KEY,
    $AZURE_OPENAI_API_KEY and the variables the endpoints file of $BATCHRUN_ENDPOINTS names.
    The shared state shows usage of these only."""
    from batchrun.errors import InputError
    from batchrun.routing.config import load_endpoints

    variables = list(KEY_VARIABLES)
    listed = os.environ.get("BATCHRUN_ENDPOINTS", "").strip()
    if listed:
        # A file that cannot be used names no keys; submit says what is wrong with it.
        with contextlib.suppress(InputError):
            variables += [c.endpoint.key_env for c in load_endpoints(Path(listed), False)]
    keys = (os.environ.get(name, "").strip() for name in variables)
    return [key for key in dict.fromkeys(keys) if key]


async def shared_usage(url: StateUrl, day: dt.date) -> list[dict[str, object]]:
    """Today's usage per (API host, key, model) across every host sharing `url`, for the keys
    this shell holds."""
    state = await connect(url, keys=caller_keys())
    try:
        return await state.usage_rows(day)
    finally:
        await state.close()


def shared_accountings(url: StateUrl, host: str, api_key: str) -> dict[str, Learned]:
    """Every model's learned accounting for one key at one API host, as any host sharing `url`
    learned it, for `estimate`."""

    async def read() -> dict[str, Learned]:
        state = await connect(url, keys=[api_key])
        try:
            return await state.accountings(host, ledger.key_fingerprint(api_key))
        finally:
            await state.close()

    return asyncio.run(read())


def usage_today(url: StateUrl | None,
                ledger_path: Path) -> tuple[dt.date, list[dict[str, object]]]:
    """Today (UTC) and its usage rows, for `status` and `estimate`: every host's from the shared
    state when there is one, else this host's SQLite ledger."""
    if url is not None:
        today = ledger.utc_now().date()
        return today, asyncio.run(shared_usage(url, today))
    book = ledger.Ledger(ledger_path, ledger.utc_now)
    try:
        today = book.today()
        return today, book.usage_rows(today)
    finally:
        book.close()


def host_lines(url: StateUrl, rows: list[dict[str, Any]]) -> list[str]:
    """What `status` adds below the usage tables: where the numbers come from and which hosts
    take part (requests admitted today per host; active = admitted in the last few seconds)."""
    lines = [f"Shared state: {url.shown} (usage of every host on these keys)"]
    if not caller_keys():
        lines.append(f"  no API key in ${', $'.join(KEY_VARIABLES)} or the endpoints of "
                     "$BATCHRUN_ENDPOINTS: the shared state shows only the usage of keys you "
                     "hold.")
    for row in rows:
        hosts = ", ".join(f"{h} ({n:,})" for h, n in row["hosts"].items()) or "none"
        active = ", ".join(row["active_hosts"]) or "none"
        lines.append(f"  {row['model']} · {row['key_fingerprint']}: requests by host today: "
                     f"{hosts} · active now: {active}")
    return lines
