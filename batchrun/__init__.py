"""batchrun: run a JSONL of LLM API requests at the account's rate limits, losing nothing.

    import batchrun
    job = batchrun.submit("jobs.jsonl", tier="tier1", tpd=500_000)   # -> Job
    answers = batchrun.run([{"id": "a1", "prompt": "Hi"}])          # -> result dicts, in order
"""

from importlib.metadata import PackageNotFoundError, version

from batchrun import errors, events
from batchrun.api import (
    Answers,
    Counts,
    Job,
    Tokens,
    estimate,
    report,
    resume,
    resume_async,
    run,
    run_async,
    status,
    submit,
    submit_async,
)
from batchrun.errors import (
    ApiRefused,
    BatchrunError,
    DailyLimitReached,
    InputError,
    Interrupted,
    StateError,
)
from batchrun.files.jobstore import JobState

try:
    __version__ = version("batchrun")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Answers",
    "ApiRefused",
    "BatchrunError",
    "Counts",
    "DailyLimitReached",
    "InputError",
    "Interrupted",
    "Job",
    "JobState",
    "StateError",
    "Tokens",
    "__version__",
    "errors",
    "estimate",
    "events",
    "report",
    "resume",
    "resume_async",
    "run",
    "run_async",
    "status",
    "submit",
    "submit_async",
]
