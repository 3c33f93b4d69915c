"""`estimate --endpoints`: how a model's requests spread over the endpoints serving it, and
which limit binds each one. Pure arithmetic on the file's limits.

At the steady rate each endpoint admits min(RPM, TPM / mean charge) requests a minute; the
router keeps each one busy at that rate, so the model's requests split in proportion and its
time is the requests over the summed rates. Priority-2 endpoints are left out: they serve only
once every priority-1 endpoint is out.
"""

from __future__ import annotations

import math
from typing import Any

from batchrun.routing.config import EndpointConfig


def per_minute(rpm: int, tpm: int, mean_charge: float) -> tuple[float, str | None]:
    """Requests a minute one endpoint admits, and the limit that sets it (None: neither)."""
    by_rpm = float(rpm) if rpm else math.inf
    by_tpm = tpm / mean_charge if tpm and mean_charge else math.inf
    if math.isinf(by_rpm) and math.isinf(by_tpm):
        return math.inf, None
    return (by_rpm, "rpm") if by_rpm <= by_tpm else (by_tpm, "tpm")


def plan(configs: tuple[EndpointConfig, ...], model: str, requests: int,
         charge_tokens: int) -> tuple[float | None, list[dict[str, Any]]]:
    """(minutes at the summed steady rate or None if unlimited, one row per endpoint)."""
    mean = charge_tokens / requests if requests else 0.0
    serving = [c for c in configs if c.serves(model)]
    first = [c for c in serving if c.priority == 1] or serving
    rates = []
    for config in serving:
        lim = config.limits_for(model)
        rate, binding = per_minute(lim.rpm, lim.tpm, mean)
        rates.append((config, lim, rate, binding))
    total = sum(rate for config, _, rate, _ in rates if config in first)
    rows = [{
        "name": config.name, "priority": config.priority,
        "limits": {"rpm": lim.rpm, "tpm": lim.tpm, "rpd": lim.rpd, "tpd": lim.tpd},
        "requests_per_min": None if math.isinf(rate) else round(rate, 1),
        "binding": binding,
        "share": round(rate / total, 4) if config in first and total and not math.isinf(total)
        else 0.0,
    } for config, lim, rate, binding in rates]
    minutes = None if math.isinf(total) or not total else round(requests / total, 2)
    return minutes, rows
