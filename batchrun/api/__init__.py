"""batchrun as a library: the same jobs as the CLI, from Python.

    submit / submit_async   a JSONL file -> Job          (blocks / awaits)
    run / run_async         dicts -> result dicts, in input order, checkpointed under $BATCHRUN_HOME
    resume / resume_async   a Job, job id or output path -> Job
    estimate, status        what the CLI's `estimate --json` and `status --json` print, as dicts
    report                  what `report --json` prints: the job's timeline as a dict

Keyword options are the CLI's long options in snake_case. Usage and input errors (the CLI's exit
2) raise `batchrun.errors.InputError`; once a job has started, every ending comes back as a Job
whose `state` and `exit_code` say which. Nothing is printed unless asked: `on_event` receives the
typed events of `batchrun.events`, `progress=True` shows the live display on stderr.

    job.py       Job, Counts, Tokens, Answers: what the calls return
    library.py   the calls
    steps.py     the steps of submit and resume the CLI shares (prepare, execute, sum up)
    options.py   the checks the CLI's option parser makes, for keyword options
    blocking.py  blocking calls over coroutines, also under a busy loop (Jupyter)
"""

from batchrun.api.job import Answers, Counts, Job, Tokens
from batchrun.api.library import (
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

__all__ = ["Answers", "Counts", "Job", "Tokens", "estimate", "report", "resume", "resume_async",
           "run", "run_async", "status", "submit", "submit_async"]
