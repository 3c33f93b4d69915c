"""What shapes one job run: input, output, endpoint, limits and policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchrun.client import Endpoint
from batchrun.tiers import Limits, preset


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that shapes a run. Holds the key's env var name (in endpoint), never the key."""

    input: Path
    output: Path
    endpoint: Endpoint
    model: str = "gpt-4o-mini"
    tier: str = "tier1"
    overrides: dict[str, int | None] = field(default_factory=dict)
    concurrency: int | None = None
    max_retries: int = 8
    timeout_s: float = 600.0
    on_bad_line: str = "fail"
    drain_s: float = 10.0
    wait: bool = False  # at the daily limit: sleep until 00:00 UTC instead of stopping

    def limits_for(self, model: str) -> Limits:
        return (preset(model, self.tier) or Limits()).override(**self.overrides)
