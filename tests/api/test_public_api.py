"""The public surface: `batchrun.__all__` is exactly this list (adding or removing a name is a
conscious act), and importing the library loads no CLI or terminal packages."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import batchrun
from tests.helpers.cli import REPO

PUBLIC = [
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


def test_all_is_exactly_the_public_names() -> None:
    assert batchrun.__all__ == PUBLIC
    assert all(hasattr(batchrun, name) for name in PUBLIC)


def test_version_comes_from_the_installed_metadata() -> None:
    assert batchrun.__version__ == version("batchrun")


def test_import_loads_neither_typer_nor_rich() -> None:
    probe = ("import sys, batchrun; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'rich'}))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                           cwd=REPO, check=True, timeout=60)
    assert shown.stdout.strip() == "[]", shown.stdout + shown.stderr
