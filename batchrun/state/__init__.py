"""Where the shared daily budget and per-minute admission live: the local SQLite ledger (the
default) or Redis, shared by every host on the same key (`--state redis://…`).

The engine sees one small interface, `Gate` (admit, settle); `open_gate` makes the right one for
what the runner's `budget_for` returned. The Redis side is imported only when it is used, since
its client is an optional extra (`pip install 'batchrun[redis]'`).
"""

from batchrun.state._cache_redis import RedisCache, open_cache, peek_shared
from batchrun.state._gate import (
    Budget,
    Gate,
    LocalGate,
    SharedBudget,
    SharedStateError,
    open_gate,
)
from batchrun.state._midnight import servers_yesterday
from batchrun.state._open import connect, host_lines, shared_accountings, usage_today
from batchrun.state._url import (
    StateUrl,
    leaving_shared,
    manifest_options,
    parse_state_url,
    state_for_resume,
)

__all__ = ["Budget", "Gate", "LocalGate", "RedisCache", "SharedBudget", "SharedStateError",
           "StateUrl", "connect", "host_lines", "leaving_shared", "manifest_options",
           "open_cache", "open_gate", "parse_state_url", "peek_shared", "servers_yesterday",
           "shared_accountings", "state_for_resume", "usage_today"]
