"""The two ways to run a job, the sync engine (sync/) and the Batch API (batch/), and what they
share.
"""
