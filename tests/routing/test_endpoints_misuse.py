"""--endpoints as a hostile user meets it: misconfigured endpoints beside working ones, one key
listed twice under two spellings of its host, the environment's $BATCHRUN_ENDPOINTS, and the
per-endpoint figures after --retry-failed. The CLI in process, against servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.errors import InputError
from batchrun.events import RouteChanged
from batchrun.policy.classify import Kind
from batchrun.policy.stopkind import StopKind
from batchrun.policy.tiers import Limits
from batchrun.routing import load_endpoints
from batchrun.simulator import Faults, SimConfig
from tests.helpers.cli import run_cli
from tests.helpers.endpoints import KEY_A, KEY_B, Ep, always, openai, outs, prompts, toml_file
from tests.helpers.endpoints import run as run_engine
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.scripted_server import status
from tests.helpers.threaded_server import ThreadedServer


class Recorder:
    """A handler that answers as told and keeps every Authorization header it was sent."""

    def __init__(self, status: int, **extra: Any) -> None:
        self.status, self.extra = status, extra
        self.keys: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.keys.append(request.headers.get("Authorization", ""))
        if 300 <= self.status < 400:
            return web.Response(status=self.status, headers={"Location": self.extra["to"]})
        return web.json_response({"error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist."}},
            status=self.status)


@pytest.mark.parametrize("status", [404, 307])
def test_an_endpoint_that_does_not_serve_the_model_is_taken_out_and_the_others_answer(
    status: int, tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A typo in an Azure deployment (404) or a base_url that redirects (307) is the endpoint's
    fault, not the request's: its requests go to the endpoint that works, none fails, and a
    redirect never carries the key to where it points."""
    good = sim_factory(SimConfig(api_key=KEY_B))
    elsewhere = Recorder(404)
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("KEY_B", KEY_B)
    with ThreadedServer(elsewhere.handle) as target:
        wrong = Recorder(status, to=target.origin + "/v1/chat/completions")
        with ThreadedServer(wrong.handle) as server:
            conf = toml_file(tmp_path / "e.toml", openai("wrong", server.origin + "/v1", "KEY_A",
                                                         6000),
                             openai("good", good.base_url, "KEY_B", 6000))
            jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
            out = tmp_path / "out.jsonl"
            run = run_cli("submit", str(jobs), "-o", str(out), "--endpoints", str(conf),
                          "--record-endpoint")
    assert run.code == 0, run.stderr
    results = read_results(out)
    assert len(results) == 20
    assert all(r["error"] is None and r["endpoint"] == "good" for r in results.values())
    assert wrong.keys  # it was tried, and named on the display as taken out
    assert "endpoint wrong is out for gpt-4o-mini: does not serve it (" in run.stderr
    assert f"HTTP {status}" in run.stderr
    assert "Check its base_url or azure_endpoint and its [endpoint.models] entry" in run.stderr
    assert "  good: 20 requests" in run.stdout
    assert "out for gpt-4o-mini: does not serve it" in run.stdout
    assert elsewhere.keys == []


def test_with_one_endpoint_left_a_404_is_still_the_requests_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last endpoint in rotation is not taken out: its answer is recorded, as without
    --endpoints, rather than the job stopping with nothing to say."""
    monkeypatch.setenv("KEY_A", KEY_A)
    with ThreadedServer(Recorder(404).handle) as server:
        conf = toml_file(tmp_path / "e.toml", openai("only", server.origin + "/v1", "KEY_A", 6000))
        jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
        run = run_cli("submit", str(jobs), "--endpoints", str(conf), "-q")
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert {r["error"]["code"] for r in results.values()} == {"DeploymentNotFound"}


@pytest.mark.parametrize(("first", "second"), [
    ("http://127.0.0.1:9/v1", "http://localhost:9/v1"),
    ("https://api.example.com/v1", "https://API.example.com:443/v1"),
])
def test_one_key_at_one_host_spelled_two_ways_is_refused(
    first: str, second: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both spellings reach one server with one key: its limits would be paced twice over."""
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("SAME_AS_A", KEY_A)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    for env in ("KEY_A", "SAME_AS_A"):  # one variable twice (the file), one key in two (the keys)
        conf = toml_file(tmp_path / "e.toml", openai("a", first, "KEY_A", 5),
                         openai("b", second, env, 5))
        run = run_cli("submit", str(jobs), "--endpoints", str(conf))
        assert run.code == 2, run.stderr
        assert "endpoints 'a' and 'b'" in run.stderr and "List each key once" in run.stderr
        assert KEY_A not in run.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_retry_failed_does_not_count_the_dropped_failures_twice_per_endpoint(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = sim_factory(SimConfig(api_key=KEY_A, faults=Faults(error_500=1.0)))
    good = sim_factory(SimConfig(api_key=KEY_A))
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("broken", broken.base_url, "KEY_A", 6000))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    first = run_cli("submit", str(jobs), "--endpoints", str(conf), "--max-retries", "0", "-q")
    assert first.code == 1, first.stderr
    toml_file(conf, openai("good", good.base_url, "KEY_A", 6000))  # the user fixes the file
    # (an edited endpoints file is named on resume: --force says the edit is meant)
    again = run_cli("resume", "--retry-failed", "--force", "-q")
    assert again.code == 0, again.stderr
    job = orjson.loads(run_cli("status", "--json").stdout)["jobs"][0]
    assert (job["done"], job["failed"]) == (4, 0)
    assert job["endpoints"] == {"good": {"done": 4, "failed": 0}}


def test_batchrun_endpoints_from_the_environment_is_named_when_it_clashes_with_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user typed no --endpoints: the message says where it came from and how to drop it."""
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("a", "https://api.openai.com/v1", "KEY_A", 5))
    monkeypatch.setenv("BATCHRUN_ENDPOINTS", str(conf))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--base-url", "http://127.0.0.1:9/v1")
    assert run.code == 2
    assert f"$BATCHRUN_ENDPOINTS is set ({conf})" in run.stderr
    assert "unset BATCHRUN_ENDPOINTS" in run.stderr


def test_requests_only_a_spent_endpoint_could_take_pause_the_job_instead_of_hanging(
    tmp_path: Path,
) -> None:
    """`small`'s TPM is below every request, so only `big` can take them; once `big` is spent
    for the day the job must pause (exit 3's stop), not wait for ever for a route that has none."""
    big = Ep(always(0.1), Limits(rpm=600, tpd=200))
    small = Ep(always(0.1), Limits(rpm=600, tpm=5))
    stop, events, _, by = run_engine(tmp_path, 40, {"big": big, "small": small})
    assert stop is not None and stop.kind is StopKind.DAILY
    assert 0 < by["big"] < 40 and by["small"] == 0
    assert ("big", "spent for the day") in outs(events)


def test_a_priority_two_endpoint_takes_what_no_priority_one_endpoint_is_big_enough_for(
    tmp_path: Path,
) -> None:
    """`first`, in rotation but with a TPM below every request, must not hold the job for
    ever: the requests go to the one endpoint that can send them."""
    first = Ep(always(0.1), Limits(rpm=600, tpm=5))
    spare = Ep(always(0.1), Limits(rpm=600), priority=2)
    stop, _, _, by = run_engine(tmp_path, 10, {"first": first, "spare": spare})
    assert stop is None and by == {"first": 0, "spare": 10}


def test_plain_http_to_another_host_says_how_to_allow_it_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The --insecure flag does not reach an endpoint of the file: its own `insecure` does."""
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("lan", "http://10.0.0.7:8000/v1", "KEY_A", 5))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf), "--insecure")
    assert run.code == 2
    assert "e.toml, line 3: endpoint 'lan': http://10.0.0.7:8000/v1 is plain http" in run.stderr
    assert "add insecure = true to this endpoint" in run.stderr
    assert "--insecure" not in run.stderr
    allowed = toml_file(conf, openai("lan", "http://10.0.0.7:8000/v1", "KEY_A", 5,
                                     insecure=True))
    assert load_endpoints(allowed)[0].endpoint.insecure


def test_resume_without_its_endpoints_file_says_which_job_needs_it_and_where(
    tmp_path: Path, sim_factory: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = sim_factory(SimConfig(api_key=KEY_A))
    monkeypatch.setenv("KEY_A", KEY_A)
    conf = toml_file(tmp_path / "e.toml", openai("a", a.base_url, "KEY_A", 6000, tpd=150))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    assert run_cli("submit", str(jobs), "--endpoints", str(conf), "-q").code == 3
    conf.rename(tmp_path / "moved.toml")
    run = run_cli("resume", "-q")
    assert run.code == 2
    job = orjson.loads(run_cli("status", "--json").stdout)["jobs"][0]["job_id"]
    assert f"job {job} sends through the endpoints listed in {conf}" in run.stderr
    assert f"put the file back at that path to resume {job}" in run.stderr


def test_a_key_written_as_a_table_key_is_refused_on_its_own_line(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefghijklmnop0123456789"
    path = tmp_path / "e.toml"
    path.write_text('[[endpoint]]\nname = "a"\nbase_url = "https://api.openai.com/v1"\n'
                    'api_key_env = "KEY_A"\n[endpoint.limits."gpt-4o-mini"]\nrpm = 5\n'
                    f'[endpoint.models]\n"{secret}" = "gpt-4o-mini"\n')
    with pytest.raises(InputError) as caught:
        load_endpoints(path, need_keys=False)
    assert caught.value.message.startswith(f"{path}, line 8: a name holds what looks like")
    assert secret not in caught.value.message


def test_estimate_with_endpoints_does_not_send_the_user_to_set_a_key_it_will_not_read(
    tmp_path: Path,
) -> None:
    conf = toml_file(tmp_path / "e.toml", openai("a", "https://api.openai.com/v1", "KEY_A", 500))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("estimate", str(jobs), "--endpoints", str(conf))
    assert run.code == 0, run.stderr
    shown = " ".join(run.stdout.split())  # as one line, however the table wrapped it
    assert "OPENAI_API_KEY" not in shown
    assert "today's usage at each endpoint is not looked up: counted as unused" in shown


def test_limits_keyed_by_the_deployment_instead_of_the_model_are_refused_not_ignored(
    tmp_path: Path,
) -> None:
    """They would be silently ignored: the job paced at the tier's preset for the model."""
    path = tmp_path / "e.toml"
    path.write_text('[[endpoint]]\nname = "east"\nazure_endpoint = "https://east.openai.azure.com"'
                    '\napi_key_env = "KEY_A"\n[endpoint.limits."mini-east"]\nrpm = 1200\n'
                    '[endpoint.models]\n"gpt-4o-mini" = "mini-east"\n')
    with pytest.raises(InputError) as caught:
        load_endpoints(path, need_keys=False)
    assert caught.value.message == (
        f"{path}, line 5: limits are keyed by the job's model, not the deployment: write "
        '[endpoint.limits."gpt-4o-mini"] for the limits of deployment \'mini-east\' of '
        "endpoint 'east'.")


@pytest.mark.parametrize("secret", [
    "gsk_" + "8XyZ2abcDEF3ghiJKL4mnoPQR5stuVWX6yz7ABcdEFgh9ijKLmnOP",  # Groq
    "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",  # Hugging Face
    "pplx-" + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4",  # Perplexity
    "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",  # Google
])
def test_another_provider_s_key_in_api_key_env_is_refused_and_never_shown(
    secret: str, tmp_path: Path,
) -> None:
    """OpenAI-compatible APIs hand out keys that do not start with sk-; pasted where the
    variable's name goes, none may be echoed back (a terminal, a CI log) or stored."""
    conf = toml_file(tmp_path / "e.toml", openai("a", "https://api.example.com/v1", secret, 5))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), "--endpoints", str(conf))
    assert run.code == 2
    assert "e.toml, line 4: api_key_env holds what looks like an API key" in run.stderr
    assert secret not in run.stderr + run.stdout


def azure(name: str, resource: str, env: str, deployment: str) -> str:
    return (f'[[endpoint]]\nname = "{name}"\nazure_endpoint = "{resource}"\napi_key_env = "{env}"\n'
            f'[endpoint.models]\n"gpt-4o-mini" = "{deployment}"\n')


def test_one_azure_deployment_listed_twice_with_one_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each deployment of a resource has its own quota, so two deployments may share a key;
    one deployment twice would be paced twice over."""
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("SAME_AS_A", KEY_A)
    resource = "https://east.openai.azure.com"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    two = toml_file(tmp_path / "two.toml", azure("east-1", resource, "KEY_A", "mini-1"),
                    azure("east-2", resource, "KEY_A", "mini-2"))
    assert [c.name for c in load_endpoints(two)] == ["east-1", "east-2"]
    for env in ("KEY_A", "SAME_AS_A"):
        conf = toml_file(tmp_path / "e.toml", azure("east-1", resource, "KEY_A", "mini"),
                         azure("east-2", resource.upper(), env, "mini"))
        run = run_cli("submit", str(jobs), "--endpoints", str(conf))
        assert run.code == 2, run.stderr
        assert "endpoints 'east-1' and 'east-2'" in run.stderr
        assert "List each key once" in run.stderr


def test_a_failing_endpoint_s_line_says_how_long_its_cool_off_really_is(tmp_path: Path) -> None:
    """The first cool-off is 30 s; the line said 'back in 1m' (minutes, rounded up)."""
    broken = Ep(always(0.1, status(500, Kind.RETRY)), Limits(rpm=600))
    good = Ep(always(0.1), Limits(rpm=600))
    _, events, _, _ = run_engine(tmp_path, 20, {"broken": broken, "good": good})
    details = [e.detail for e in events if isinstance(e, RouteChanged) and e.state == "failing"]
    assert details and details[0].endswith("back in 30s")


def test_an_endless_endpoints_file_is_refused_after_its_first_megabyte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$BATCHRUN_ENDPOINTS=/dev/zero (or a device, a log that never ends) was read whole."""
    monkeypatch.setenv("BATCHRUN_ENDPOINTS", "/dev/zero")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs))
    assert run.code == 2
    assert "/dev/zero is not a regular file" in run.stderr
    huge = tmp_path / "huge.toml"
    huge.write_bytes(b"#" * (1 << 20) + b"\n")
    monkeypatch.setenv("BATCHRUN_ENDPOINTS", str(huge))
    run = run_cli("submit", str(jobs))
    assert run.code == 2
    assert f"{huge}: larger than 1 MB; an endpoints file lists a few endpoints" in run.stderr


def test_estimate_refuses_a_model_no_endpoint_serves_as_submit_does(tmp_path: Path) -> None:
    """It planned the model as unlimited and said to give --rpm/--tpm, which --endpoints
    refuses; submit then refused the file."""
    conf = toml_file(tmp_path / "e.toml", openai("a", "https://api.example.com/v1", "KEY_A", 5)
                     .replace("gpt-4o-mini", "llama-3"))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "q", "prompt": "hi", "model": "mine"}])
    run = run_cli("estimate", str(jobs), "--endpoints", str(conf))
    assert run.code == 2
    assert f"{conf}: no endpoint serves model 'mine', which the job uses" in run.stderr
