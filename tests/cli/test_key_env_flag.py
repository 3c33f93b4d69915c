"""--api-key-env takes a variable's name. A key given there by mistake is refused without being
shown (it was echoed whole in "$gsk_… is not set"), and so is a name no shell could export."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.jsonl import write_jsonl

KEYS = [
    "sk-proj-0123456789abcdefABCDEF",
    "gsk_0123456789abcdefABCDEFghij",
    "hf_0123456789abcdefABCDEFghijkl",
    "AIzaSyA0123456789abcdefABCDEFghijklmnop",
]


@pytest.mark.parametrize("key", KEYS)
def test_a_key_given_as_the_variable_name_is_refused_unseen(key: str, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    run = run_cli("submit", str(jobs), "--api-key-env", key)
    assert run.code == 2
    assert key not in run.stderr + run.stdout
    assert key[6:] not in run.stderr + run.stdout
    assert "--api-key-env" in run.stderr and "name of the environment variable" in run.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_a_name_no_shell_can_export_is_refused(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    run = run_cli("submit", str(jobs), "--api-key-env", "MY KEY")
    assert run.code == 2
    # Not echoed: what is not a variable's name may be a key of a kind no pattern knows.
    assert "MY KEY" not in run.stderr
    assert "--api-key-env" in run.stderr and "name of the environment variable" in run.stderr
