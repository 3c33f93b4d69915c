"""The engine's view of an endpoints file: one Upstream per endpoint, with its own client, key
and ledger scope (the endpoint's host, the key's fingerprint, the model family), exactly as the
one endpoint of a job without --endpoints has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from batchrun.backends.cacheflow import server_name
from batchrun.backends.sync.lanes import Upstream
from batchrun.errors import InputError
from batchrun.files.ledger import DailyBudget, Scope, key_fingerprint
from batchrun.http.client import ApiClient
from batchrun.policy.cachekey import key_digest
from batchrun.policy.tiers import Limits, family
from batchrun.routing.config import EndpointConfig, load_endpoints
from batchrun.routing.spec import JobSpec
from batchrun.state import SharedBudget


def _limits(config: EndpointConfig) -> Callable[[str], Limits | None]:
    def limits_for(model: str) -> Limits | None:
        return config.limits_for(model) if config.serves(model) else None

    return limits_for


BudgetIn = Callable[[Scope, Limits], "DailyBudget | SharedBudget"]


def _budgets(config: EndpointConfig, budget_in: BudgetIn,
             keyfp: str) -> Callable[[str, Limits], DailyBudget | SharedBudget]:
    def budget_for(model: str, limits: Limits) -> DailyBudget | SharedBudget:
        # As one endpoint's scope, by the name the endpoint knows the model by: an Azure
        # deployment is its own quota.
        name = config.deployment(model)
        return budget_in(Scope(config.endpoint.host, keyfp, family(name) or name), limits)

    return budget_for


def build_upstreams(spec: JobSpec, budget_in: BudgetIn,
                    key_for: Callable[[EndpointConfig], str] | None = None) -> list[Upstream]:
    """Each endpoint's key is read from its variable here, and never kept anywhere else.
    `budget_in` makes the daily budget of a ledger scope (local SQLite, or shared in Redis).
    `key_for`: the keys of simulated endpoints, which have none in the environment."""
    upstreams: list[Upstream] = []
    keys: dict[tuple[str, str, str], str] = {}
    for config in spec.endpoints:
        key = key_for(config) if key_for is not None else config.endpoint.api_key()
        for host, deployment in config.quotas():
            account = (host, deployment, key_fingerprint(key))
            if account in keys:
                raise InputError(
                    f"{spec.endpoints_file}: endpoints {keys[account]!r} and {config.name!r} "
                    f"send to {config.endpoint.host} with the same key (in "
                    f"${config.endpoint.key_env}): one key's limits would be paced twice over. "
                    "List each key once.")
            keys[account] = config.name
        client = ApiClient(config.endpoint, key, spec.timeout_s,
                           max(512, spec.concurrency or 0),
                           max_response_bytes=int(spec.max_response_mb * 2**20))
        upstreams.append(Upstream(
            config.name, client, config.endpoint.host, _limits(config),
            _budgets(config, budget_in, key_fingerprint(key)), config.deployment, config.priority,
            key_digest(key), server_name(config.endpoint)))
    return upstreams


def with_endpoints(spec: JobSpec, path: Path, record_endpoint: bool,
                   job: str | None = None, need_keys: bool = True) -> JobSpec:
    """`spec` sending through the endpoints of the file at `path` (read and checked now);
    `job`: the job resumed over it; `need_keys`: False for --simulate."""
    configs = load_endpoints(path, need_keys=need_keys, job=job)
    return replace(spec, endpoint=configs[0].endpoint, endpoints=configs,
                   endpoints_file=str(path.expanduser().resolve()),
                   record_endpoint=record_endpoint)
