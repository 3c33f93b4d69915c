"""The endpoints file (`--endpoints endpoints.toml`): read with tomllib, checked whole before
anything is sent. Every refusal names the file and, where the text shows it, the line.

    [[endpoint]]
    name = "openai-main"
    base_url = "https://api.openai.com/v1"    # or azure_endpoint = "https://….openai.azure.com"
    api_key_env = "OPENAI_API_KEY"             # the key itself never goes in this file
    tier = "tier1"
    priority = 1                               # 2: only when every 1 serving the model is out
    [endpoint.limits."gpt-4o-mini"]            # rpm, tpm, rpd, tpd; 0 = unlimited
    rpm = 500
    [endpoint.models]                          # the job's model -> this endpoint's name for it
    "gpt-4o-mini" = "my-deployment"
    [endpoint.prices."gpt-4o-mini"]            # optional: USD per 1M tokens (--max-cost)
    input = 0.15
    cached_input = 0.075                       # optional: the input price if not given
    output = 0.60

The key of each endpoint is read from its variable only; a value that looks like a key is
refused (its line is named, the value never shown).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from batchrun.errors import InputError
from batchrun.http.endpoint import AZURE_API_VERSION, ENV_NAME, Endpoint, looks_like_key
from batchrun.policy.prices import Price
from batchrun.policy.tiers import TIERS
from batchrun.routing.spec import (  # the file's readers import it from here
    EndpointConfig as EndpointConfig,
)

ENDPOINT_KEYS = {"name", "base_url", "azure_endpoint", "api_version", "api_key_env", "tier",
                 "priority", "limits", "models", "insecure", "prices"}
PRICE_KEYS = ("input", "cached_input", "output")
LIMIT_KEYS = ("rpm", "tpm", "rpd", "tpd")
PRIORITIES = (1, 2)
MAX_FILE_BYTES = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
def _line_of(text: str, *needles: str, after: int = 0) -> int | None:
    """The 1-based number of the first line at or after line `after` that sets the key
    `needles[0]` (or, failing that, holds every needle)."""
    lines = list(enumerate(text.splitlines(), 1))[max(0, after - 1):]
    sets = re.compile(rf"""^\s*["']?{re.escape(needles[0])}["']?\s*=""") if needles else None
    for n, line in lines:
        if sets is not None and sets.match(line):
            return n
    for n, line in lines:
        if all(needle in line for needle in needles):
            return n
    return None


class _Reader:
    """Checks one file; `fail` builds the message with file and line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.starts = [n for n, line in enumerate(text.splitlines(), 1)
                       if line.strip().startswith("[[endpoint]]")]

    def where(self, index: int, *needles: str) -> str:
        start = self.starts[index] if index < len(self.starts) else 0
        line = _line_of(self.text, *needles, after=start) if needles else start or None
        return f"{self.path}, line {line}" if line else str(self.path)

    def fail(self, index: int, message: str, *needles: str) -> InputError:
        return InputError(f"{self.where(index, *needles)}: {message}")


def _scan_for_keys(reader: _Reader, data: Any, index: int) -> None:
    """Refuse any string in the file that looks like an API key, naming its line only."""
    if isinstance(data, dict):
        for key, value in data.items():
            if looks_like_key(key) or (isinstance(value, str) and looks_like_key(value)):
                # The key-like text itself marks the line (a value may repeat elsewhere).
                line = _line_of(reader.text, key if looks_like_key(key) else str(value))
                where = f"{reader.path}, line {line}" if line else str(reader.path)
                what = "a name" if looks_like_key(key) else key
                raise InputError(
                    f"{where}: {what} holds what looks like an API key. Keys never go in the "
                    "endpoints file: export the key in a variable and name that variable with "
                    'api_key_env = "NAME".')
            _scan_for_keys(reader, value, index)
    elif isinstance(data, list):
        for item in data:
            _scan_for_keys(reader, item, index)


def _limits(reader: _Reader, i: int, raw: Any) -> dict[str, dict[str, int]]:
    if not isinstance(raw, dict):
        raise reader.fail(i, "limits must be a table of models, e.g. "
                          '[endpoint.limits."gpt-4o-mini"] with rpm = 500', "limits")
    out: dict[str, dict[str, int]] = {}
    for model, table in raw.items():
        if not isinstance(table, dict):
            raise reader.fail(i, f"limits for {model!r} must be a table of rpm, tpm, rpd, tpd",
                              model)
        for key, value in table.items():
            if key not in LIMIT_KEYS:
                raise reader.fail(i, f"unknown limit {key!r} for {model!r}; use rpm, tpm, rpd "
                                  "or tpd", key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise reader.fail(i, f"{key} for {model!r} must be 0 (unlimited) or a positive "
                                  "whole number", key)
        out[model] = dict(table)
    return out


def _models(reader: _Reader, i: int, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise reader.fail(i, 'models must map the job\'s model to this endpoint\'s name for it, '
                          'e.g. "gpt-4o-mini" = "my-deployment"', "models")
    return dict(raw)


def _prices(reader: _Reader, i: int, raw: Any) -> dict[str, Price]:
    if not isinstance(raw, dict):
        raise reader.fail(i, "prices must be a table of models, e.g. "
                          '[endpoint.prices."gpt-4o-mini"] with input = 0.15 and output = 0.6',
                          "prices")
    out: dict[str, Price] = {}
    for model, table in raw.items():
        if not isinstance(table, dict):
            raise reader.fail(i, f"prices for {model!r} must be a table of input, cached_input "
                              "and output (US dollars per 1M tokens)", model)
        for key, value in table.items():
            if key not in PRICE_KEYS:
                raise reader.fail(i, f"unknown price {key!r} for {model!r}; use input, "
                                  "cached_input or output", key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 <= value < 1e6):
                raise reader.fail(i, f"{key} price for {model!r} must be a number of US "
                                  "dollars per 1M tokens, 0 or more", key)
        missing = [k for k in ("input", "output") if k not in table]
        if missing:
            raise reader.fail(i, f"prices for {model!r} need {' and '.join(missing)} (US "
                              "dollars per 1M tokens)", model)
        out[model] = Price(float(table["input"]),
                           float(table["cached_input" if "cached_input" in table else "input"]),
                           float(table["output"]))
    return out


def _endpoint(reader: _Reader, i: int, raw: Any, need_keys: bool) -> EndpointConfig:
    if not isinstance(raw, dict):
        raise reader.fail(i, "each [[endpoint]] must be a table")
    unknown = sorted(set(raw) - ENDPOINT_KEYS)
    if unknown:
        hint = (" (the key itself never goes in this file: name its variable with api_key_env)"
                if any("key" in k for k in unknown) else "")
        raise reader.fail(i, f"unknown key {unknown[0]!r}{hint}; an endpoint takes "
                          f"{', '.join(sorted(ENDPOINT_KEYS))}", unknown[0])
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise reader.fail(i, "every endpoint needs a name of letters, digits, '.', '_' or '-' "
                          '(e.g. name = "openai-main")', *(["name"] if "name" in raw else []))
    for key in ("base_url", "azure_endpoint", "api_version", "api_key_env", "tier"):
        if key in raw and not isinstance(raw[key], str):
            raise reader.fail(i, f"{key} of endpoint {name!r} must be a string", key)
    if "base_url" in raw and "azure_endpoint" in raw:
        raise reader.fail(i, f"endpoint {name!r} has both base_url and azure_endpoint; give one",
                          "azure_endpoint")
    if "base_url" not in raw and "azure_endpoint" not in raw:
        raise reader.fail(i, f"endpoint {name!r} needs base_url (OpenAI or compatible) or "
                          "azure_endpoint (an Azure OpenAI resource)")
    key_env = raw.get("api_key_env")
    if key_env is None:
        raise reader.fail(i, f'endpoint {name!r} needs api_key_env = "NAME", the variable '
                          "holding its key")
    if not ENV_NAME.match(key_env):
        # Not echoed: what is not a variable's name may be a key of a kind not caught above.
        raise reader.fail(i, f"api_key_env of endpoint {name!r} must be the name of an "
                          "environment variable (letters, digits, _), e.g. "
                          'api_key_env = "OPENAI_API_KEY"', "api_key_env")
    if need_keys and not os.environ.get(key_env, "").strip():
        raise reader.fail(i, f"${key_env} (the key of endpoint {name!r}) is not set; export "
                          "the key in it", "api_key_env")
    tier = raw.get("tier", "tier1").lower()
    if tier not in TIERS:
        raise reader.fail(i, f"unknown tier {raw['tier']!r} for endpoint {name!r}; choose one "
                          f"of {', '.join(TIERS)}", "tier")
    priority = raw.get("priority", 1)
    if priority not in PRIORITIES or isinstance(priority, bool):
        raise reader.fail(i, f"priority of endpoint {name!r} must be 1 or 2 (2 is used only "
                          "when every 1 is out)", "priority")
    insecure = raw.get("insecure", False)
    if not isinstance(insecure, bool):
        raise reader.fail(i, f"insecure of endpoint {name!r} must be true or false", "insecure")
    url_key = "azure_endpoint" if "azure_endpoint" in raw else "base_url"
    try:
        endpoint = Endpoint.make(raw.get("base_url"), raw.get("azure_endpoint"), key_env,
                                 insecure)
    except InputError as exc:
        if not insecure and _fine_if_insecure(raw, key_env):
            # Endpoint.make's words name the --insecure flag, which no endpoint here reads.
            raise reader.fail(
                i, f"endpoint {name!r}: {raw[url_key]} is plain http to a host that is not this "
                "machine: its key would cross the network unencrypted. Use https, or add "
                "insecure = true to this endpoint if you really mean it.", url_key) from None
        raise reader.fail(i, f"endpoint {name!r}: {exc.message}", url_key) from None
    if endpoint.azure:
        endpoint = Endpoint(endpoint.base_url, True, raw.get("api_version", AZURE_API_VERSION),
                            key_env, insecure)
    limits = _limits(reader, i, raw.get("limits", {}))
    models = _models(reader, i, raw.get("models", {}))
    for model, deployment in models.items():
        if deployment in limits and deployment not in models:
            # Else ignored: the model would be paced at its tier's preset instead.
            raise reader.fail(
                i, "limits are keyed by the job's model, not the deployment: write "
                f'[endpoint.limits."{model}"] for the limits of deployment {deployment!r} of '
                f"endpoint {name!r}.", deployment)
    prices = _prices(reader, i, raw.get("prices", {}))
    return EndpointConfig(name, endpoint, tier, priority, limits, models, prices)


def _fine_if_insecure(raw: dict[str, Any], key_env: str) -> bool:
    """Whether the endpoint's URL was refused only for being plain http to another host."""
    try:
        Endpoint.make(raw.get("base_url"), raw.get("azure_endpoint"), key_env, insecure=True)
    except InputError:
        return False
    return True


def _read(path: Path, job: str | None) -> bytes:
    """The file's bytes, no more than the cap. Not a regular file (a FIFO, a device): refused,
    not read for ever."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path.expanduser(), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if job is not None:
            raise InputError(
                f"job {job} sends through the endpoints listed in {path}, which cannot be "
                f"read: {exc.strerror}. The job reads that file again on each resume: put the "
                f"file back at that path to resume {job}.") from None
        raise InputError(
            f"cannot read the endpoints file {path}: {exc.strerror}. Give --endpoints (or "
            "$BATCHRUN_ENDPOINTS) the path of a TOML file of [[endpoint]] tables.") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path} is not a regular file (a pipe or a device?); give "
                             "--endpoints the path of a TOML file of [[endpoint]] tables.")
        raw_bytes = file.read(MAX_FILE_BYTES + 1)
    if len(raw_bytes) > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than 1 MB; an endpoints file lists a few endpoints")
    return raw_bytes


def digest(path: Path) -> str:
    """What the job records of its endpoints file, to notice an edit on resume: the whole
    file's hash (it is small), so the same bytes written again are no change."""
    return hashlib.sha256(_read(path, None)).hexdigest()


def check_unchanged(options: dict[str, Any], job: str, force: bool) -> None:
    """On resume: refuse (exit 2, naming the file) an endpoints file edited since the job
    recorded it, unless `force`, which records it as it is now. A file that cannot be read is
    left to the reading that follows, with its own message."""
    path, then = options.get("endpoints"), options.get("endpoints_sha256")
    if not path or not then:
        return  # no --endpoints, or a job from before the file was fingerprinted
    try:
        now = digest(Path(path))
    except InputError:
        return
    if now == then:
        return
    if not force:
        raise InputError(
            f"{path} changed since job {job} started: its endpoints, keys' variables or limits "
            "may not be the ones the job ran with. Restore the file, or add --force to resume "
            "over it as it is now.")
    options["endpoints_sha256"] = now


def load_endpoints(path: Path, need_keys: bool = True,
                   job: str | None = None) -> tuple[EndpointConfig, ...]:
    """Read and check an endpoints file; InputError (exit 2) naming file and line if not fit.
    `need_keys`: each api_key_env must be set (not for `estimate`, which sends nothing).
    `job`: the job being resumed over the file, for the message if it cannot be read."""
    text = _read(path, job).decode("utf-8", errors="replace")
    reader = _Reader(path, text)
    try:
        data = tomllib.loads(text)
        _scan_for_keys(reader, data, 0)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "(at line N, column M)": its own words carry the position.
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to read; an endpoints file holds "
                         "[[endpoint]] tables a few levels deep") from None
    unknown = sorted(set(data) - {"endpoint"})
    if unknown:
        raise InputError(f"{reader.where(0, unknown[0])}: unknown key {unknown[0]!r}; the file "
                         "holds [[endpoint]] tables only")
    items = data.get("endpoint")
    if not isinstance(items, list) or not items:
        raise InputError(f"{path}: no [[endpoint]] tables; list at least one endpoint")
    configs = tuple(_endpoint(reader, i, raw, need_keys) for i, raw in enumerate(items))
    seen: dict[str, int] = {}
    accounts: dict[tuple[str, str, str], str] = {}
    for i, config in enumerate(configs):
        if config.name in seen:
            raise reader.fail(i, f"two endpoints are named {config.name!r}; names must be "
                              "unique (they name the endpoint in output and status)", "name")
        seen[config.name] = i
        for host, deployment in config.quotas():
            account = (host, deployment, config.endpoint.key_env)
            if account in accounts:
                raise reader.fail(
                    i, f"endpoints {accounts[account]!r} and {config.name!r} both send to "
                    f"{config.endpoint.host} with ${config.endpoint.key_env}: one key's limits "
                    "would be paced twice over. List each key once.", "api_key_env")
            accounts[account] = config.name
    return configs


def check_serves(configs: tuple[EndpointConfig, ...], models: list[str], path: Path) -> None:
    """Every model of the job needs an endpoint; every endpoint must serve one of the models."""
    for model in models:
        if not any(c.serves(model) for c in configs):
            raise InputError(
                f"{path}: no endpoint serves model {model!r}, which the job uses. Add a "
                f'[endpoint.limits."{model}"] or [endpoint.models] entry for it to an endpoint.')
    for config in configs:
        if not any(config.serves(m) for m in models):
            raise InputError(
                f"{path}: endpoint {config.name!r} serves none of the job's models "
                f"({', '.join(sorted(models))}); remove it or add a limits or models entry.")
