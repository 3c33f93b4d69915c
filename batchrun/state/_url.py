"""The --state URL: which shared state a job uses, and how it is shown and stored.

The URL as given may hold a password (redis://user:secret@host/0). It is used only to connect;
everything shown or stored is `shown` (no user info), and the manifest records whether
credentials were needed so `resume` asks for them again instead of silently going local.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from batchrun.errors import InputError, without_userinfo

LOCAL = ("", "local", "sqlite")
SCHEMES = ("redis", "rediss")


def _secret_param(name: str) -> bool:
    """redis-py takes credentials in the query too (?password=, ?username=, ?ssl_password=)."""
    name = name.lower()
    return "password" in name or name in ("user", "username")


def _without_credentials(url: str) -> str:
    """The URL without user info and without the query's credentials; its other options stay
    (a resumed job needs e.g. ?ssl_cert_reqs= again). Plain string work: never fails."""
    base, sep, query = without_userinfo(url).partition("?")
    kept = [p for p in query.split("&") if p and not _secret_param(unquote(p.partition("=")[0]))]
    return base + ("?" + "&".join(kept) if sep and kept else "")


@dataclass(frozen=True, slots=True)
class StateUrl:
    url: str  # as given: may hold credentials, only for connecting

    @property
    def shown(self) -> str:
        """For messages, status and the manifest: never a credential."""
        parts = urlsplit(self.url)
        base = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="").geturl()
        query = _without_credentials(self.url).partition("?")[2]
        return base + ("?" + query if query else "")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential the URL holds, as given and decoded: to redact from error text."""
        parts = urlsplit(self.url)
        found = [parts.password or "", unquote(parts.password or "")]
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if _secret_param(name):
                found += [value, quote(value, safe="")]
        return tuple(s for s in found if s)

    @property
    def has_credentials(self) -> bool:
        parts = urlsplit(self.url)
        return parts.username is not None or parts.password is not None or any(
            _secret_param(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True))

    def manifest_options(self) -> dict[str, Any]:
        return {"state": self.shown, "state_credentials": self.has_credentials}


def parse_state_url(value: str | None) -> StateUrl | None:
    """None for the local SQLite ledger; a Redis URL otherwise. Refuses (exit 2, nothing sent)
    a URL batchrun cannot use, and a Redis URL when the redis client is not installed."""
    if value is None or value.strip().lower() in LOCAL:
        return None
    value = value.strip()
    shown = _without_credentials(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check: it raises on a bad one
    except ValueError:
        raise InputError(f"--state {shown!r} is not a valid URL; give e.g. "
                         "redis://localhost:6379/0") from None
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise InputError(f"--state {shown!r} is not a Redis URL: give redis://host:6379/0 (or "
                         "rediss:// for TLS), or leave it out for the local ledger.")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise InputError(f"--state {shown!r} names database {parts.path.strip('/')!r}; Redis "
                         "databases are numbers: give e.g. redis://localhost:6379/0")
    if importlib.util.find_spec("redis") is None:
        raise InputError("--state redis://… needs the Redis client, which is not installed: "
                         "pip install 'batchrun[redis]' (from a checkout of batchrun: "
                         "pip install '.[redis]')")
    return StateUrl(value)


def state_for_resume(given: str | None, options: dict[str, Any],
                     from_env: bool = False) -> StateUrl | None:
    """The state a resumed job uses: the one given now, else the one it started with. A job
    whose Redis needed credentials must be given them again: they were never stored. A job
    that kept its budget in Redis goes on local limits only when `--state local` says so on
    the command line: `$BATCHRUN_STATE=local` (`from_env`) may be a leftover of another
    shell, and local limits do not count other hosts' use of the key."""
    stored = options.get("state")
    if given is not None:
        url = parse_state_url(given)
        if url is None and stored and from_env:
            raise InputError(
                f"this job keeps its shared state in {stored}, and $BATCHRUN_STATE says "
                f"{given.strip() or 'local'!r}: on this host's local limits other hosts' use "
                "of the key would not be counted, and its quota could be overspent. Give the "
                "Redis URL again (--state or $BATCHRUN_STATE), or resume with --state local to "
                "run it on local limits all the same.")
        return url
    if not stored:
        return None
    if options.get("state_credentials"):
        raise InputError(
            f"this job keeps its shared state in {stored}, which needs credentials batchrun "
            "does not store. Give the URL again with --state or $BATCHRUN_STATE.")
    return parse_state_url(stored)


def leaving_shared(url: StateUrl | None, options: dict[str, Any]) -> str | None:
    """The warning for a job resumed on local limits that kept its budget in Redis."""
    stored = options.get("state")
    if url is not None or not stored:
        return None
    return (f"this job kept its shared state in {stored}; it now runs on this host's local "
            "ledger, so other hosts' use of the key is no longer counted and together they "
            "may overspend its limits. Resume with --state URL to share them again.")


def manifest_options(url: StateUrl | None) -> dict[str, Any]:
    """What the manifest records of the state a run uses (local: none)."""
    return url.manifest_options() if url else {"state": None, "state_credentials": False}
