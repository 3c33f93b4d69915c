"""The Batch API as a second way to run a job (`--via batch`, `--via auto`): half the price, its
own enqueued-token queue instead of the per-minute and per-day limits, results within 24 h.

    plan      pure splitting into parts and the enqueued-token gate
    api       the Files and Batches HTTP API (OpenAI and Azure routes)
    parts     the manifest's record of each part, and the part files on disk
    collect   merging output and error files into the job's output, once per custom_id
    remote    what the API holds of a job's parts: batch objects, lookups by metadata, cancel
    run       the orchestrator: upload → create → poll → download → merge, resume-safe
    entry     what the runner calls: run a job through the Batch API, cancel its batches
"""
