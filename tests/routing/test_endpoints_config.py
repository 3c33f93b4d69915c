"""The endpoints file: every refusal names the file and the line, and never shows a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import InputError
from batchrun.policy.stopkind import StopKind
from batchrun.policy.tiers import Limits
from batchrun.routing import check_serves, load_endpoints
from batchrun.routing.rules import Out, Standing, combined, cool_off_s, may_take, verdict

GOOD = '''[[endpoint]]
name = "openai-main"
base_url = "https://api.openai.com/v1"
api_key_env = "KEY_ONE"
tier = "tier1"

[endpoint.limits."gpt-4o-mini"]
rpm = 500
tpm = 200000

[[endpoint]]
name = "azure-east"
azure_endpoint = "https://east.openai.azure.com"
api_version = "2024-10-21"
api_key_env = "KEY_TWO"
priority = 2

[endpoint.models]
"gpt-4o-mini" = "my-4o-mini-deployment"
'''


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_ONE", "sk-one-0123456789")
    monkeypatch.setenv("KEY_TWO", "0123456789abcdef0123456789abcdef")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as caught:
        load_endpoints(write(tmp_path, text))
    assert caught.value.exit_code == 2
    return caught.value.message


def test_a_good_file_gives_each_endpoint_its_url_key_variable_limits_and_names(
    tmp_path: Path,
) -> None:
    main, east = load_endpoints(write(tmp_path, GOOD))
    assert (main.name, main.endpoint.base_url, main.endpoint.key_env) == (
        "openai-main", "https://api.openai.com/v1", "KEY_ONE")
    assert main.limits_for("gpt-4o-mini") == Limits(500, 200_000, 10_000,
                                                    batch_queue_tokens=2_000_000)
    assert east.endpoint.azure and east.priority == 2 and east.endpoint.key_env == "KEY_TWO"
    assert east.deployment("gpt-4o-mini") == "my-4o-mini-deployment"
    assert main.deployment("gpt-4o-mini") == "gpt-4o-mini"
    assert east.serves("gpt-4o-mini") and not east.serves("llama-3")


def test_a_key_in_the_file_is_refused_naming_its_line_and_never_shown(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefghijklmnop0123456789"
    text = GOOD.replace('api_key_env = "KEY_TWO"', f'api_key_env = "{secret}"')
    message = refused(tmp_path, text)
    assert "endpoints.toml, line 15: api_key_env holds what looks like an API key" in message
    assert secret not in message


def test_an_azure_style_key_anywhere_is_refused_too(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('name = "azure-east"',
                                             'name = "azure-east"\nnote = "' + "a1" * 16 + '"'))
    assert "line 13: note holds what looks like an API key" in message


def test_an_api_key_entry_says_where_keys_go(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('tier = "tier1"', 'api_key = "my key"'))
    assert "line 5: unknown key 'api_key' (the key itself never goes in this file" in message


def test_an_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('tier = "tier1"', 'teir = "tier1"'))
    assert "endpoints.toml, line 5: unknown key 'teir'" in message


def test_a_missing_key_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEY_TWO")
    message = refused(tmp_path, GOOD)
    assert "line 15: $KEY_TWO (the key of endpoint 'azure-east') is not set" in message


def test_a_missing_variable_is_fine_when_no_key_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KEY_TWO")
    assert len(load_endpoints(write(tmp_path, GOOD), need_keys=False)) == 2


def test_two_endpoints_with_one_name_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('"azure-east"', '"openai-main"'))
    assert "line 12: two endpoints are named 'openai-main'" in message


@pytest.mark.parametrize(("change", "words"), [
    (('tier = "tier1"', 'tier = "tier9"'), "line 5: unknown tier 'tier9'"),
    (("priority = 2", "priority = 3"), "line 16: priority of endpoint 'azure-east' must be 1"),
    (("rpm = 500", "rpm = -1"), "line 8: rpm for 'gpt-4o-mini' must be 0 (unlimited)"),
    (("rpm = 500", "rpn = 5"), "line 8: unknown limit 'rpn'"),
    (('api_key_env = "KEY_ONE"', 'api_key_env = "KEY ONE"'), "line 4: api_key_env of "
     "endpoint 'openai-main' must be the name of an environment variable"),
    (('base_url = "https://api.openai.com/v1"\n', ""), "line 1: endpoint 'openai-main' needs "
     "base_url"),
    (('base_url = "https://api.openai.com/v1"', 'base_url = "http://example.com/v1"'),
     "line 3: endpoint 'openai-main': http://example.com/v1 is plain http"),
    (('name = "openai-main"', 'name = "two words"'), "line 2: every endpoint needs a name"),
    (('"gpt-4o-mini" = "my-4o-mini-deployment"', '"gpt-4o-mini" = 5'), "line 18: models must "
     "map"),
])
def test_each_mistake_is_named_with_file_and_line(
    tmp_path: Path, change: tuple[str, str], words: str,
) -> None:
    assert words in refused(tmp_path, GOOD.replace(*change))


def test_bad_toml_and_an_empty_file_say_so(tmp_path: Path) -> None:
    assert "not valid TOML" in refused(tmp_path, "[[endpoint]\nname = 1")
    assert "at line 1" in refused(tmp_path, "[[endpoint]\nname = 1")
    assert "no [[endpoint]] tables" in refused(tmp_path, "")
    assert "unknown key 'endpoints'" in refused(tmp_path, "[[endpoints]]\nname = 'a'\n")


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the endpoints file"):
        load_endpoints(tmp_path / "nope.toml")


def test_every_model_needs_an_endpoint_and_every_endpoint_a_model(tmp_path: Path) -> None:
    configs = load_endpoints(write(tmp_path, GOOD))
    check_serves(configs, ["gpt-4o-mini"], tmp_path)
    with pytest.raises(InputError, match="no endpoint serves model 'llama-3'"):
        check_serves(configs, ["gpt-4o-mini", "llama-3"], tmp_path)
    # A preset, a limits entry or a models entry serves a model: llama-3 has only the first's.
    llama = GOOD.replace('tier = "tier1"', 'tier = "tier1"\n[endpoint.limits."llama-3"]\n')
    with pytest.raises(InputError, match="endpoint 'azure-east' serves none of the job's models"):
        check_serves(load_endpoints(write(tmp_path, llama)), ["llama-3"], tmp_path)


def test_priority_two_takes_work_only_when_every_priority_one_is_out() -> None:
    one, two = Standing(1), Standing(2)
    assert may_take(one, [one, two]) and not may_take(two, [one, two])
    spent = Standing(1, Out.DAILY)
    assert may_take(two, [spent, two]) and not may_take(spent, [spent, two])
    cooling = Standing(1, Out.FAILING)
    assert may_take(two, [cooling, two])


def test_the_model_stops_only_when_every_route_is_out_for_good() -> None:
    assert verdict([Standing(1, Out.DAILY), Standing(1)]) is None
    assert verdict([Standing(1, Out.DAILY), Standing(1, Out.FAILING)]) is None
    assert verdict([Standing(1, Out.DAILY), Standing(2, Out.REFUSED)]) is StopKind.DAILY
    assert verdict([Standing(1, Out.REFUSED), Standing(2, Out.REFUSED)]) is StopKind.REFUSED
    assert verdict([Standing(1, Out.UNREACHABLE), Standing(1, Out.REFUSED)]) is StopKind.REFUSED
    assert verdict([Standing(1, Out.UNREACHABLE)]) is StopKind.NO_NETWORK


def test_combined_limits_add_up_and_unlimited_wins() -> None:
    assert combined([Limits(600, 1000), Limits(1200, 0)]) == Limits(1800, 0)
    assert cool_off_s(1) == 30 and cool_off_s(2) == 60 and cool_off_s(10) == 600


def test_one_key_listed_twice_for_one_host_is_refused(tmp_path: Path) -> None:
    twice = GOOD + '''
[[endpoint]]
name = "again"
base_url = "https://api.openai.com/v1"
api_key_env = "KEY_ONE"
'''
    message = refused(tmp_path, twice)
    assert ("line 24: endpoints 'openai-main' and 'again' both send to api.openai.com with "
            "$KEY_ONE") in message


def test_a_key_as_a_table_key_is_refused_too(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefghijklmnop0123456789"
    message = refused(tmp_path, GOOD.replace('"gpt-4o-mini" = "my-4o-mini-deployment"',
                                             f'"{secret}" = "x"'))
    assert "line 19: a name holds what looks like an API key" in message
    assert secret not in message
