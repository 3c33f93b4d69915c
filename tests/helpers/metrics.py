"""Reading /metrics as Prometheus does: the text parsed by prometheus_client's own parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# A sample by its name and labels, e.g. ("batchrun_requests_total", (("endpoint", ""),
# ("model", "gpt-4o-mini"), ("outcome", "ok"))).
Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Key, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[Key, float], name: str, **labels: str) -> float:
    """One sample; a missing one fails the test with the names that are there."""
    key = (name, tuple(sorted(labels.items())))
    assert key in found, f"{key} not in {sorted({n for n, _ in found})}"
    return found[key]


def scrape(port: int) -> dict[Key, float] | None:
    """What 127.0.0.1:port/metrics answers now; None while nothing listens there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            return samples(answer.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None
