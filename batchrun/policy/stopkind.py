"""Why a job stops before every request has a line: the kinds a `backends.stop.Stop` carries.

Below the backends because a pure decision names them too: routing's `verdict` says which kind
ends a job whose endpoints all stand down.
"""

from __future__ import annotations

import enum


class StopKind(enum.Enum):
    DAILY = "daily"  # a daily budget (ours or the API's) is spent
    COST = "cost"  # --max-cost: the next request's worst case would pass the spend cap
    REFUSED = "refused"  # the API refused the key or the account
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    NO_NETWORK = "no_network"  # no attempt ever reached the API
    INPUT_CHANGED = "input_changed"  # the input file changed while the engine read it
    INCOMPLETE = "incomplete"  # the reader gave fewer lines than the check counted
    STATE = "state"  # the shared state (--state redis://) stopped answering
    OUTPUT = "output"  # the output cannot take another line (a full disk, a write refused)
    DETACHED = "detached"  # --detach: the batches run on the server; not an error (exit 0)
    BATCH = "batch"  # the Batch API path stopped early, for the reason its `said` words
