"""Flex processing (`--service-tier flex`): which models may take it, and the body field.

The price table (policy.prices, `Price.flex`) says which models offer flex. A model it prices
without flex is refused before anything is sent: OpenAI and Azure answer such a request 400
and do not fall back to standard processing, so every line would fail. A model it does not
list by name (another server's: Groq offers flex on every model) is sent with a warning; the
server says whether it takes it. Only a row's own name and its dated snapshots count as listed:
the table prices a variant (gpt-5-chat-latest, o3-pro) by its family, but flex is offered
model by model, and a family's flex says nothing of its variants'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from batchrun.policy.prices import PRICES, price, price_family, undated
from batchrun.policy.request import CHAT_URL, Request

FLEX = "flex"
SERVICE_TIERS = (FLEX,)


def without_flex(models: Iterable[str]) -> tuple[list[str], list[str]]:
    """(models the price table lists and that offer no flex, models it does not list). An
    embeddings model is neither: it is sent with no service tier (with_service_tier), so it
    cannot lack one; the table's embeddings are its rows that price no output."""
    refused, unknown = [], []
    for model in sorted(set(models)):
        p = price(model)
        if p is None or price_family(model) != undated(model):
            unknown.append(model)
        elif not p.flex and p.output > 0:
            refused.append(model)
    return refused, unknown


def with_service_tier(request: Request, tier: str | None) -> Request:
    """The request with the job's service tier. A line that sets its own `service_tier` keeps
    it (the line is the more specific choice), and embeddings take none."""
    if tier is None or request.url != CHAT_URL or "service_tier" in request.body:
        return request
    return replace(request, body={**request.body, "service_tier": tier})


def refusal(models: Iterable[str]) -> str | None:
    """Why `--service-tier flex` cannot run over these models (None: it can)."""
    refused, _ = without_flex(models)
    if not refused:
        return None
    offer = [m for m, p in PRICES.items() if p.flex]
    # The model may be -m's default, a name the user never wrote: say how to name another.
    verb = "does" if len(refused) == 1 else "do"
    return (f"--service-tier flex: {', '.join(refused)} {verb} not offer flex processing (the "
            f"API would refuse each request with a 400, and nothing was sent). Models with "
            f"flex: {', '.join(offer)}. Drop --service-tier flex, give lines that name no "
            f"model one with flex (-m {offer[0]}), or send those lines in another job.")


def warning(models: Iterable[str]) -> str | None:
    """The models sent with flex that batchrun cannot vouch for (None: none)."""
    _, unknown = without_flex(models)
    if not unknown:
        return None
    return (f"--service-tier flex: batchrun does not know whether {', '.join(unknown)} offers "
            "flex processing; sending it with service_tier \"flex\" (a server without flex "
            "answers 400, and those requests fail).")
