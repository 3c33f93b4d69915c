"""batchrun's simulator: an independent OpenAI-compatible server to test batchrun against.

    python -m batchrun.simulator --port 8000 --rpm 500 --tpm 200000 --window 1

It imports nothing of the client it checks (tests/test_boundaries.py keeps it so): a test cannot
pass because both sides share a mistake.

    model        a server's rate limits and habits, free of sockets (its own token count)
    server       chat and embeddings over HTTP: `Simulator`, `SimServer`, faults
    batch_model  the Batch API's files, batches and validation, free of sockets
    batch        the Files and Batches routes, served beside the chat routes of a `batch.Host`
    command      the command line (`config_from_argv`, `main`)
"""

from batchrun.simulator.batch_model import BatchConfig, BatchStats
from batchrun.simulator.command import config_from_argv
from batchrun.simulator.model import Habits, SimLimits
from batchrun.simulator.server import (
    Faults,
    SimConfig,
    SimServer,
    SimStats,
    Simulator,
    reply_text,
    request_digest,
)

__all__ = ["BatchConfig", "BatchStats", "Faults", "Habits", "SimConfig", "SimLimits", "SimServer",
           "SimStats", "Simulator", "config_from_argv", "reply_text", "request_digest"]
