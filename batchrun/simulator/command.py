"""The simulator's command line: `python -m batchrun.simulator --port 8000 --rpm 500 ...`.

The flags are described in batchrun.simulator.server (chat, embeddings, habits, faults) and
batchrun.simulator.batch (the Files and Batches APIs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from batchrun.simulator.batch_model import BatchConfig
from batchrun.simulator.model import Habits, SimLimits
from batchrun.simulator.server import Faults, SimConfig, SimServer, Simulator

__all__ = ["config_from_argv", "main"]

DESCRIPTION = ("A local OpenAI-compatible API that enforces rate limits the way real servers do, "
               "habits included.")


def _names(text: str) -> frozenset[str]:
    return frozenset(n.strip() for n in text.split(",") if n.strip())


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m batchrun.simulator", description=DESCRIPTION)
    p.add_argument("--port", type=int, default=8000)
    for name in ("rpm", "tpm", "rpd", "tpd"):
        p.add_argument(f"--{name}", type=int, default=0, help="0 = unlimited")
    p.add_argument("--window", type=float, default=60.0, help="seconds of budget a bucket holds")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0, help="± seconds, uniform")
    p.add_argument("--tail", type=float, default=0.0,
                   help="share of requests that take 10 x the latency (e.g. 0.01)")
    p.add_argument("--headers-at", choices=("admission", "response"), default="admission")
    p.add_argument("--header-scope", choices=("window", "minute", "none"), default="window")
    p.add_argument("--refill", choices=("continuous", "quantized"), default="continuous")
    p.add_argument("--shared", type=float, default=0.0,
                   help="share of every limit another client of the key uses")
    p.add_argument("--lower-at", type=float, default=None,
                   help="seconds after the first request when the limits drop")
    p.add_argument("--lower-to", type=float, default=1.0, help="the limits' new share")
    p.add_argument("--seed", type=int, default=0)
    for name in ("error-500", "error-503", "drop", "hang", "truncate", "no-choices", "html"):
        p.add_argument(f"--{name}", type=float, default=0.0, help="chance per request")
    f = p.add_argument_group("flex processing (requests with service_tier \"flex\")")
    f.add_argument("--flex-unavailable", type=float, default=0.0, metavar="P",
                   help="chance a flex request finds no capacity (not billed, not charged to "
                   "the limits)")
    f.add_argument("--flex-status", type=int, choices=(429, 498), default=429,
                   help="how no capacity is answered: 429 as OpenAI, 498 as Groq")
    f.add_argument("--flex-models", type=_names, default=None, metavar="M,M",
                   help="the models that take flex (default: every one); another answers 400 "
                   "as Azure does")
    b = p.add_argument_group("Batch API (see batchrun.simulator.batch)")
    b.add_argument("--batch-seconds", type=float, default=5.0, metavar="S",
                   help="how long a batch is in progress (validating, finalizing: a tenth)")
    b.add_argument("--batch-queue-tokens", type=int, default=2_000_000, metavar="N",
                   help="enqueued prompt tokens per model (0 = no limit)")
    b.add_argument("--batch-expire", type=float, default=None, metavar="SHARE",
                   help="expiring batches stop with this share of requests done")
    b.add_argument("--batch-expire-batches", type=int, default=1, metavar="N",
                   help="the first N batches expire (0 = every batch)")
    b.add_argument("--batch-fail-validation", type=int, default=0, metavar="N",
                   help="the first N batches fail validation")
    for name, what in (("upload-5xx", "chance an upload gets a 500"),
                       ("create-5xx", "chance a create gets a 500 after creating the batch"),
                       ("poll-5xx", "chance a GET of a batch gets a 500"),
                       ("request-errors", "share of requests that end as 400s")):
        b.add_argument(f"--batch-{name}", type=float, default=0.0, metavar="P", help=what)
    return p.parse_args(argv)


def config_from_argv(argv: list[str] | None) -> tuple[SimConfig, int]:
    """The simulator's configuration and port from its command line."""
    args = _parse_args(argv)
    faults = Faults(error_500=args.error_500, error_503=args.error_503, drop=args.drop,
                    hang=args.hang, truncate=args.truncate, no_choices=args.no_choices,
                    html=args.html, flex_unavailable=args.flex_unavailable)
    limits = SimLimits(args.rpm, args.tpm, args.rpd, args.tpd, args.window)
    habits = Habits(header_timing=args.headers_at, header_scope=args.header_scope,
                    refill=args.refill, shared=args.shared, lower_at_s=args.lower_at,
                    lower_to=args.lower_to)
    batch = BatchConfig(seconds=args.batch_seconds, queue_tokens=args.batch_queue_tokens,
                        expire_share=args.batch_expire, expire_batches=args.batch_expire_batches,
                        fail_validation=args.batch_fail_validation,
                        upload_5xx=args.batch_upload_5xx, create_5xx=args.batch_create_5xx,
                        poll_5xx=args.batch_poll_5xx,
                        request_errors=args.batch_request_errors)
    config = SimConfig(limits=limits, latency_s=args.latency, jitter_s=args.jitter,
                       latency_tail=args.tail, habits=habits, faults=faults, seed=args.seed,
                       batch=batch, flex_status=args.flex_status,
                       flex_models=args.flex_models)
    return config, args.port


async def _serve(config: SimConfig, port: int) -> None:
    async with SimServer(Simulator(config), port=port) as server:
        print(f"batchrun simulator listening on {server.base_url}", flush=True)  # noqa: T201
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(*config_from_argv(argv)))

