"""batchrun: run a JSONL of LLM API requests at the account's rate limits, losing nothing."""

__version__ = "0.1.0"
