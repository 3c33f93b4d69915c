"""Opening the Redis state from the runner and from `status`, without importing its client
unless it is used."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchrun import ledger
from batchrun.ledger import utc_now
from batchrun.state._url import StateUrl

if TYPE_CHECKING:
    from batchrun.state._redis import RedisState


async def connect(url: StateUrl, now_utc: Callable[[], dt.datetime] = utc_now) -> RedisState:
    from batchrun.state._redis import RedisState

    return await RedisState.connect(url, now_utc)


async def shared_usage(url: StateUrl, day: dt.date) -> list[dict[str, object]]:
    """Today's usage per (API host, key, model) across every host sharing `url`."""
    state = await connect(url)
    try:
        return await state.usage_rows(day)
    finally:
        await state.close()


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
    for row in rows:
        hosts = ", ".join(f"{h} ({n:,})" for h, n in row["hosts"].items()) or "none"
        active = ", ".join(row["active_hosts"]) or "none"
        lines.append(f"  {row['model']} · {row['key_fingerprint']}: requests by host today: "
                     f"{hosts} · active now: {active}")
    return lines
