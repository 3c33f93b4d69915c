"""Keyword options as the CLI's options: the checks its parser makes, for calls from Python."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchrun.errors import (
    InputError,
)
from batchrun.policy.decide import DEFAULT_FLEX_WAIT_S
from batchrun.policy.flex import SERVICE_TIERS
from batchrun.policy.tiers import TIERS

# The largest whole number an option takes: past any real budget, and within what the manifest
# (64-bit integers), the ledger (SQLite) and Redis's scripts (doubles, exact to 2**53) hold.
MAX_WHOLE = 10**15
# Seconds a wait may be given as: a day, which --timeout and --poll-max never need to pass (an
# infinite one cannot become the whole milliseconds the engine schedules with).
MAX_SECONDS = 86_400.0
VIAS = ("sync", "batch", "auto")
# --max-cost in US dollars: a millionth of a dollar (less than any one request) up to a bound
# no job reaches, which keeps the sums exact enough in floating point.
MIN_COST, MAX_COST = 1e-6, 1e9
DEFAULT_TIMEOUT_S = 600.0
# OpenAI's flex guide raises its client's timeout to 15 minutes: flex answers come slower.
FLEX_TIMEOUT_S = 900.0
ON_BAD_LINE = ("fail", "skip")
MAX_PORT = 65_535
# The options of one endpoint, which an endpoints file gives per endpoint instead.
SINGLE_ENDPOINT = ("base_url", "azure_endpoint", "api_key_env", "tier", "rpm", "tpm", "rpd",
                   "tpd")


# What each keyword option must be, as the CLI's parser converts it; a value of another type
# would otherwise fail deep inside (an AttributeError) or be saved with the job and make its
# manifest unreadable (rpm=1.5).
TEXT = ("tier", "model", "base_url", "azure_endpoint", "api_key_env", "state", "name",
        "service_tier")
PATHS = ("jobs", "output", "endpoints")
FLAGS = ("simulate", "insecure", "force", "record_endpoint", "detach", "wait", "progress",
         "retry_failed", "cancel_batches", "cache", "cache_refresh")
WHOLE = ("rpm", "tpm", "rpd", "tpd", "batch_queue_tokens", "concurrency", "max_retries",
         "assume_output_tokens", "metrics_port")
NUMBERS = ("timeout", "drain", "poll_max", "max_response_mb", "latency", "flex_wait",
           "max_cost")


def type_problem(name: str, value: object) -> str | None:
    """What a keyword option's value should be instead (None: its type is right, or it was
    not given)."""
    if value is None:
        return None
    if name in TEXT and not isinstance(value, str):
        return "give a string"
    if name in PATHS and not isinstance(value, str | os.PathLike):
        return "give a path (a str or pathlib.Path)"
    if name in FLAGS and not isinstance(value, bool):
        return "give True or False"
    if name in WHOLE and (isinstance(value, bool) or not isinstance(value, int)):
        return "give a whole number"
    if name in NUMBERS and (isinstance(value, bool) or not isinstance(value, int | float)):
        return "give a number"
    if name == "on_event" and not callable(value):
        return "give a function that takes one event"
    return None


def check_types(options: Mapping[str, Any]) -> None:
    for name, value in options.items():
        if (problem := type_problem(name, value)) is not None:
            raise InputError(f"{name}={value!r} ({type(value).__name__}): {problem}.")


# The CLI command whose options a library call takes
_COMMAND = {"run": "submit"}


def refuse_unknown(call: str, options: Mapping[str, Any], known: frozenset[str] | set[str],
                   ) -> None:
    """A keyword the call does not take; the key is never one (it would sit in notebooks,
    shells' history and tracebacks), so that one is answered with where the key goes."""
    unknown = sorted(set(options) - known)
    if not unknown:
        return
    if unknown[0] in ("api_key", "key", "openai_api_key"):
        raise InputError(f"{call}: the API key is never an argument. Set it in $OPENAI_API_KEY "
                         "(or in another variable, and name that with api_key_env=).")
    raise InputError(f"{call}: unknown option {unknown[0]!r}; the options are the CLI's long "
                     f"options in snake_case (see `batchrun {_COMMAND.get(call, call)} "
                     "--help`).")


def check_tier(value: str) -> str:
    """Tier names are not case-sensitive; an unknown one is refused before anything runs."""
    check_types({"tier": value})
    tier = value.lower()
    if tier not in TIERS:
        raise InputError(f"unknown tier {value!r}; choose one of {', '.join(TIERS)}.")
    return tier


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"{name}={value!r} is out of range: give a number from {low:g} to "
                         f"{high:g}.")


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InputError(f"{name}={value!r}: choose one of {', '.join(choices)}.")


def check_options(o: Mapping[str, Any]) -> None:
    """What the CLI's option parser checks, for keyword options (exit 2 there, InputError here)."""
    check_types(o)
    for name in ("rpm", "tpm", "rpd", "tpd", "batch_queue_tokens"):
        _check_range(name, o.get(name), 0, MAX_WHOLE)
    _check_range("concurrency", o.get("concurrency"), 1, MAX_WHOLE)
    _check_range("max_retries", o.get("max_retries"), 0, MAX_WHOLE)
    _check_range("timeout", o.get("timeout"), 1, MAX_SECONDS)
    _check_range("drain", o.get("drain"), 0, MAX_SECONDS)
    _check_range("poll_max", o.get("poll_max"), 1, MAX_SECONDS)
    _check_range("max_response_mb", o.get("max_response_mb"), 0.0001, 1e6)
    _check_range("max_cost", o.get("max_cost"), MIN_COST, MAX_COST)
    _check_choice("via", o.get("via"), VIAS)
    _check_choice("on_bad_line", o.get("on_bad_line"), ON_BAD_LINE)
    _check_choice("service_tier", o.get("service_tier"), SERVICE_TIERS)
    _check_range("flex_wait", o.get("flex_wait"), 0, MAX_SECONDS)
    _check_range("metrics_port", o.get("metrics_port"), 1, MAX_PORT)


def flex_options(service_tier: str | None, flex_wait: float | None, via: str | None,
                 timeout: float | None) -> dict[str, Any]:
    """--service-tier, --flex-wait and the timeout they imply, as JobSpec fields. Flex is a
    tier of the per-minute path: the Batch API has its own price and no such field."""
    check_options({"service_tier": service_tier, "flex_wait": flex_wait, "timeout": timeout})
    if service_tier is not None and via not in (None, "sync"):
        raise InputError(f"--service-tier {service_tier} and --via {via} cannot go together: "
                         "flex is a tier of the per-minute path, and the Batch API already "
                         "bills at the same rates. Drop one of them.")
    if flex_wait is not None and service_tier is None:
        raise InputError("--flex-wait is how long a request waits for flex capacity; give "
                         "--service-tier flex too, or drop it.")
    default = FLEX_TIMEOUT_S if service_tier is not None else DEFAULT_TIMEOUT_S
    return {"service_tier": service_tier, "timeout_s": default if timeout is None else timeout,
            "flex_wait_s": DEFAULT_FLEX_WAIT_S if flex_wait is None else flex_wait}


def cache_mode(cache: bool | None, refresh: bool | None, given_only: bool = False,
               ) -> str | None:
    """--cache/--no-cache and --cache-refresh as the job's cache mode (on, off, refresh);
    `given_only` (resume): None when neither was given, so the job keeps its own."""
    check_types({"cache": cache, "cache_refresh": refresh})
    if refresh and cache is False:
        raise InputError("--cache-refresh sends every request and stores its answer, and "
                         "--no-cache stores nothing: they cannot go together. Drop one of them.")
    if refresh:
        return "refresh"
    if cache is None:
        return None if given_only else "on"
    return "on" if cache else "off"


def batch_options(via: str | None, detach: bool | None, poll_max: float | None,
                  queue: int | None, given_only: bool = False) -> dict[str, Any]:
    """The Batch API options as JobSpec fields; `given_only` (resume): only those given."""
    options: dict[str, Any] = {"via": via, "detach": detach or None,
                               "poll_max_s": poll_max, "batch_queue_tokens": queue}
    if given_only:
        return options
    defaults = {"via": "sync", "detach": False, "poll_max_s": 60.0}
    return {k: defaults[k] if v is None and k in defaults else v for k, v in options.items()}


def refuse_beside_endpoints(path: Path, given: list[str], from_env: bool) -> None:
    """--endpoints: each endpoint's URL, key, tier and limits come from the file, so the one
    endpoint's options beside it are a usage error (the environment's defaults are not)."""
    if given and from_env:  # the user typed no --endpoints: say where it came from
        raise InputError(
            f"--endpoints and {', '.join(given)} cannot go together: $BATCHRUN_ENDPOINTS is set "
            f"({path}), and with it each endpoint's URL, key variable, tier and limits come "
            f"from that file. Drop {', '.join(given)}, or unset BATCHRUN_ENDPOINTS to use one "
            "endpoint.")
    if given:
        raise InputError(
            f"--endpoints and {', '.join(given)} cannot go together: with --endpoints each "
            f"endpoint's URL, key variable, tier and limits come from {path}. Drop "
            f"{', '.join(given)}, or drop --endpoints to use one endpoint.")


def given_flags(options: Mapping[str, Any]) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in SINGLE_ENDPOINT
            if options.get(name) is not None]
