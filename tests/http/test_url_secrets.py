"""A key pasted into a URL's query or fragment is never shown: not in a refusal, not in a file.

`--base-url "…/v1?api-key=sk-…"`, `OPENAI_BASE_URL=…#sk-…`, `--azure-endpoint "…/?key=sk-…"` and
the same in an endpoints file or a proxy variable are refused (batchrun appends paths to the
URL), and the refusal names the URL without what follows its '?' or '#': the secret may have
any shape, so its place in the URL, not its look, decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import redact
from tests.helpers.cli import FAKE_KEY, Run, run_cli
from tests.helpers.jsonl import write_jsonl

PLAIN = "MyPlainSecretValue123"  # nothing key-shaped about it: only its place in the URL shows it
HEX = "0123456789abcdef0123456789abcdef"  # an Azure key's shape


def _everything(home: Path, tmp_path: Path, *runs: Run, given: Path | None = None) -> str:
    """What the user can see: every command's stdout and stderr, every file batchrun keeps in its
    home (manifests, ledger) and every file it wrote beside the input (outputs); not `given`, the
    user's own file that holds the secret."""
    text = "".join(r.stdout + r.stderr for r in runs)
    for root in (home, tmp_path):
        for path in root.rglob("*"):
            if path.is_file() and path != given:
                text += path.read_bytes().decode(errors="replace")
    return text


@pytest.mark.parametrize("secret", [FAKE_KEY, PLAIN, HEX])
@pytest.mark.parametrize(("how", "url"), [
    ("--base-url", "http://127.0.0.1:9/v1?api-key={}"),
    ("--base-url", "http://127.0.0.1:9/v1?x=1&token={}#frag"),
    ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1#{}"),
    ("--azure-endpoint", "https://res.openai.azure.com/?key={}"),
    ("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/#{}"),
    ("--base-url", "ftp://127.0.0.1:9/v1?api-key={}"),  # refused for its scheme first
    ("--base-url", "http://127.0.0.1:notaport/v1?api-key={}"),  # for its port first
])
def test_a_key_in_a_url_query_or_fragment_is_never_shown(
        how: str, url: str, secret: str, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    given = url.format(secret)
    env = {"OPENAI_API_KEY": FAKE_KEY, "AZURE_OPENAI_API_KEY": FAKE_KEY}
    args: tuple[str, ...] = ()
    if how.startswith("--"):
        args = (how, given)
    else:
        env[how] = given
    submit = run_cli("submit", str(jobs), *args, env=env)
    assert submit.code == 2
    assert "URL" in submit.stderr or "endpoint" in submit.stderr
    simulated = run_cli("submit", str(jobs), "--simulate", *args, env=env)
    runs = [submit, simulated, run_cli("status", env=env), run_cli("resume", env=env),
            run_cli("estimate", str(jobs), env=env), run_cli("cancel", "jobs", env=env),
            run_cli("forget", "jobs", env=env)]
    shown = _everything(Path(isolated_env["BATCHRUN_HOME"]), tmp_path, *runs)
    assert secret not in shown
    assert secret not in shown.replace("\n", "")  # not even cut across a wrapped line


@pytest.mark.parametrize("secret", [FAKE_KEY, PLAIN])
def test_a_key_in_an_endpoints_file_url_is_never_shown(
        secret: str, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    toml = tmp_path / "endpoints.toml"
    toml.write_text(f'[[endpoint]]\nname = "a"\nbase_url = "https://api.example.com/v1?key='
                    f'{secret}"\napi_key_env = "OPENAI_API_KEY"\n')
    env = {"OPENAI_API_KEY": FAKE_KEY}
    runs = [run_cli("submit", str(jobs), "--endpoints", str(toml), env=env),
            run_cli("estimate", str(jobs), "--endpoints", str(toml), env=env)]
    assert all(r.code == 2 for r in runs)
    assert "line 3" in runs[0].stderr  # the base_url's line, refused
    assert secret not in _everything(Path(isolated_env["BATCHRUN_HOME"]), tmp_path, *runs,
                                     given=toml)


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_a_token_in_a_proxy_url_query_is_never_shown(
        variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    run = run_cli("submit", str(jobs), "--base-url", "https://api.example.com/v1",
                  env={"OPENAI_API_KEY": FAKE_KEY, variable: f"http://proxy:8080/?token={PLAIN}"})
    assert run.code == 2 and f"${variable}" in run.stderr
    assert PLAIN not in run.stdout + run.stderr


@pytest.mark.parametrize("text", [
    f"GET https://h.example/v1?api-key={PLAIN} failed",
    f"see https://h.example/v1?a=1&access_token={PLAIN}&b=2",
    f"redirected to https://h.example/login#{PLAIN}",
    f"'https://h.example/?sig={PLAIN}'",
])
def test_redact_masks_secret_parameters_and_fragments_of_any_url(text: str) -> None:
    shown = redact(text)
    assert PLAIN not in shown
    assert "https://h.example/" in shown  # where it went is still said
