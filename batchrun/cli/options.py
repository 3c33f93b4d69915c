"""The command line's options: typer parameters shared by the commands, and the checks that
need to know how an option was given (typed, or from the environment)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from batchrun.api import options as api_options
from batchrun.api.options import MAX_SECONDS, MAX_WHOLE
from batchrun.policy.tiers import TIERS


class OnBadLine(str, Enum):
    fail = "fail"
    skip = "skip"


Jobs = Annotated[Path, typer.Argument(metavar="JOBS", help="JSONL file of requests")]
Model = Annotated[str, typer.Option("-m", "--model", help="model for lines that name none")]
Tier = Annotated[str, typer.Option(help=f"preset limits: {', '.join(TIERS)}",
                                   callback=api_options.check_tier)]
Limit = Annotated[int | None, typer.Option(min=0, max=MAX_WHOLE, show_default="preset",
                                           help="0 = unlimited")]


Wait = Annotated[bool | None, typer.Option(
    "--wait/--no-wait", show_default="--no-wait",
    help="at the daily limit: sleep until 00:00 UTC and go on, or stop with exit 3")]
Force = Annotated[bool, typer.Option(
    "--force", help="go on although the input changed since the job began")]
Json = Annotated[bool, typer.Option("--json", help="print the summary as JSON")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="no progress display")]
MAX_RETRIES_HELP = ("retries of a request after 5xx, timeouts and dropped connections; "
                    "per-minute 429s are waited out and don't count")
MaxRetries = Annotated[int, typer.Option(min=0, max=MAX_WHOLE, help=MAX_RETRIES_HELP)]
MaxResponseMb = Annotated[float | None, typer.Option(
    min=0.0001, max=1e6, show_default="64",
    help="largest answer accepted, in MB; a bigger one fails its request (response_too_large)")]
Drain = Annotated[float, typer.Option(
    "--drain", min=0, max=MAX_SECONDS, metavar="S",
    help="at Ctrl-C or SIGTERM: seconds to wait for the answers of requests in flight before "
    "abandoning them (other stops wait for them up to --timeout)")]


class Via(str, Enum):
    sync = "sync"
    batch = "batch"
    auto = "auto"


ViaOpt = Annotated[Via | None, typer.Option(
    "--via", show_default="sync", help="sync: the per-minute path; batch: the Batch API (half "
    "price, 24 h window); auto: sync while today's budget lasts, the rest via the Batch API")]
Detach = Annotated[bool, typer.Option(
    "--detach", help="Batch API: submit the batches, print the job id and exit; resume collects")]
PollMax = Annotated[float | None, typer.Option(
    min=1, max=MAX_SECONDS, show_default="60",
    help="Batch API: longest wait between two polls, in seconds")]
QueueTokens = Annotated[int | None, typer.Option(
    min=0, max=MAX_WHOLE, show_default="preset",
    help="Batch API: enqueued-token limit (0 = unlimited)")]
MaxCost = Annotated[float | None, typer.Option(
    "--max-cost", min=api_options.MIN_COST, max=api_options.MAX_COST, metavar="USD",
    show_default="none", help="stop before the job's spend (every run, at list prices) could "
    "pass USD: exit 3, resume with a larger cap")]
CacheOpt = Annotated[bool | None, typer.Option(
    "--cache/--no-cache", show_default="--cache",
    help="answer a request whose exact body was answered before from the response cache, and "
    "send identical lines once; --no-cache sends every line and stores nothing")]
CacheRefresh = Annotated[bool, typer.Option(
    "--cache-refresh", help="send every line (no cache lookups) and store each answer over "
    "the one stored")]


class ServiceTier(str, Enum):
    flex = "flex"


ServiceTierOpt = Annotated[ServiceTier | None, typer.Option(
    "--service-tier", show_default="standard processing",
    help="flex: OpenAI's flex processing (Batch API prices, slower; 'resource unavailable' "
    "answers are waited out, see --flex-wait; the timeout default becomes 900 s)")]
FlexWait = Annotated[float | None, typer.Option(
    "--flex-wait", min=0, max=MAX_SECONDS, metavar="S", show_default="900",
    help="with --service-tier flex: seconds one request may wait, in all, for flex capacity "
    "before it is recorded failed (flex_unavailable); these waits are not --max-retries")]
Concurrency = Annotated[int | None, typer.Option(
    min=1, max=MAX_WHOLE, show_default="from rate x latency", help="most requests in flight")]
State = Annotated[str | None, typer.Option(
    "--state", envvar="BATCHRUN_STATE", metavar="URL", show_default="the local ledger",
    help="shared limiter and daily ledger: redis://[user:password@]host:6379/0 for every host "
    "on the same key")]
BaseUrl = Annotated[str | None, typer.Option(envvar="OPENAI_BASE_URL",
                                            help="any OpenAI-compatible API")]
AzureEndpoint = Annotated[str | None, typer.Option(
    envvar="AZURE_OPENAI_ENDPOINT", help="Azure OpenAI resource; model = deployment")]
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", min=1, max=api_options.MAX_PORT, metavar="N", show_default="off",
    help="serve Prometheus metrics on http://127.0.0.1:N/metrics while the job runs (needs "
    "pip install 'batchrun[metrics]')")]
ApiKeyEnv = Annotated[str | None, typer.Option(
    help="name of the env var holding the key", show_default="OPENAI_API_KEY")]


def refuse_beside_endpoints(ctx: typer.Context, path: Path) -> None:
    """The single endpoint's options typed beside --endpoints (their environment's defaults
    are no error)."""
    given = [f"--{name.replace('_', '-')}" for name in api_options.SINGLE_ENDPOINT
             if name in ctx.params and (src := ctx.get_parameter_source(name)) is not None
             and src.name == "COMMANDLINE"]
    from_env = getattr(ctx.get_parameter_source("endpoints"), "name", "") == "ENVIRONMENT"
    api_options.refuse_beside_endpoints(path, given, from_env)
