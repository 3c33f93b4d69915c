"""`batchrun cache stats|clear`: the response cache, as a user looks after it."""

from __future__ import annotations

from typing import Any

import typer
from rich.text import Text

from batchrun.api.cache import cache_clear, cache_stats
from batchrun.cli import printing
from batchrun.cli.options import Json, State
from batchrun.files.jobstore import state_home
from batchrun.state import parse_state_url

app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None,
    help="The response cache: answers stored under a digest of what was asked (host, API key, "
    "url, body), written again for any later identical request instead of sending it.")


def _note(text: str) -> None:
    printing.err.print(Text(text), style="yellow")


def _size(n: int) -> str:
    mb = n / (1024 * 1024)
    if n == 0 or mb >= 10:
        return f"{mb:,.0f} MB"
    return f"{mb:.1f} MB" if mb >= 0.1 else f"{n / 1024:.1f} KB"


def _answers(n: int) -> str:
    return f"{n:,} answer" + ("" if n == 1 else "s")


@app.command()
def stats(state: State = None, json_: Json = False) -> None:
    """Answers stored, size and cap of each cache (the real one and the --simulate one)."""
    printing.reply.json = json_
    rows = cache_stats(parse_state_url(state), state_home(), _note)
    if json_:
        printing.print_json({"caches": rows})
        return
    for row in rows:
        printing.out.print(_stats_line(row), markup=False)


def _stats_line(row: dict[str, Any]) -> str:
    return (f"{row['kind']:<9}  {row['where']}: {_answers(row['entries'])}, "
            f"{_size(row['bytes'])} of a {_size(row['cap_bytes'])} cap")


@app.command()
def clear(state: State = None) -> None:
    """Remove every stored answer. Both caches; later requests are sent again."""
    for row in cache_clear(parse_state_url(state), state_home(), _note):
        printing.out.print(f"{row['kind']:<9}  removed {_answers(row['removed'])} from "
                           f"{row['where']}", markup=False)
