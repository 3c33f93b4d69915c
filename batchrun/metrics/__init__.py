"""--metrics-port: what a running job shows Prometheus.

`MetricsTally` counts the job's events (no third-party import: the core can build it); the
exposition (`batchrun.metrics.exposition`) turns it into Prometheus text on 127.0.0.1 and is
imported only when the option is given, so a user without the `metrics` extra pays nothing."""

from __future__ import annotations

from batchrun.errors import InputError
from batchrun.metrics.tally import MetricsTally

__all__ = ["MetricsTally", "require_metrics_extra"]


def require_metrics_extra() -> None:
    """Refuse --metrics-port, before anything is planned or sent, where the optional library
    it needs is not installed."""
    try:
        import prometheus_client  # noqa: F401  (only whether it is there)
    except ImportError:
        raise InputError("--metrics-port needs the prometheus_client library, which batchrun's "
                         "`metrics` extra installs: pip install 'batchrun[metrics]' (or drop "
                         "--metrics-port). Nothing was sent.") from None
