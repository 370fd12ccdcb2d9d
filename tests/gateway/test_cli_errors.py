"""The admin CLI refuses bad input in one line naming the option (typer's runner), never with a traceback."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moecloud.cli import app


@pytest.fixture
def cli(tmp_path: Path):
    """Runs `moecloud ...` against a fresh SQLite database in its own home; returns (exit code, output)."""
    runner = CliRunner()
    env = {"MOECLOUD_HOME": str(tmp_path), "MOECLOUD_GATEWAY__DB_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "COLUMNS": "80"}

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args), env=env)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result.exit_code, result.output

    assert run("tenants", "create", "acme", "--trial-credit", "2")[0] == 0
    return run


@pytest.mark.parametrize(("args", "code", "expected"), [
    (["credits", "add", "acme", "abc"], 2, "Invalid value for 'amount': 'abc' is not an amount of money"),
    (["credits", "add", "acme", "0.0000000001"], 2, "finer than the smallest unit (0.000000001)"),
    (["credits", "add", "acme", "0"], 2, "Invalid value for AMOUNT: Input should be greater than 0"),
    (["credits", "add", "nobody", "5"], 1, "error: tenant 'nobody' not found"),
    (["tenants", "create", "beta", "--trial-credit", "abc"], 2, "Invalid value for '--trial-credit'"),
    (["tenants", "create", "beta", "--trial-credit", "1e-12"], 2, "finer than the smallest unit"),
    (["tenants", "create", "bad name!"], 2, "Invalid value for NAME: String should match pattern"),
    (["tenants", "create", "acme"], 1, "error: tenant 'acme' already exists"),
    (["tenants", "create", "beta", "--rpm", "0"], 2, "Invalid value for '--rpm'"),
    (["tenants", "limits", "acme", "--rpm", "0"], 2, "Invalid value for '--rpm': 0 is below 1"),
    (["tenants", "limits", "acme", "--tpm", "lots"], 2, "Invalid value for '--tpm'"),
    (["tenants", "limits", "acme"], 2, "give at least one of --rpm, --tpm, --weight"),
    (["keys", "create", "--tenant", "acme", "--name", "k", "--expires", "2020-01-01"], 2,
     "Invalid value for '--expires': 2020-01-01 is in the past"),
    (["keys", "create", "--tenant", "acme", "--name", "k", "--expires", "soon"], 2,
     "Invalid value for '--expires': 'soon' is neither a duration"),
    (["keys", "create", "--tenant", "acme", "--name", "k", "--rpm", "abc"], 2, "Invalid value for '--rpm'"),
    (["keys", "limits", "key_missing", "--rpm", "5"], 1, "error: key 'key_missing' not found"),
    (["keys", "rotate", "key_missing"], 1, "error: key 'key_missing' not found"),
    (["usage", "--since", "last week"], 2, "Invalid value for '--since'"),
    (["prices", "set", "m", "--input-miss", "x", "--input-hit", "1", "--output", "1"], 2,
     "Invalid value for '--input-miss'"),
    (["prices", "delete", "m"], 1, "error: price 'm' not found"),
    (["deployments", "add", "p", "--base-url", "http://h/v1", "--model", "m", "--price", "1,abc"], 2,
     "Invalid value for '--price': 'abc' is not an amount of money"),
    (["tenants", "delete", "nobody", "--yes"], 1, "error: tenant 'nobody' not found"),
])
def test_bad_input_is_one_line_naming_the_option(cli, args: list[str], code: int, expected: str) -> None:
    exit_code, output = cli(*args)
    assert exit_code == code, output
    assert output.count("\n") == 1 and output.startswith("error: "), output
    assert expected in output and "Traceback" not in output and "Value error" not in output


def test_relative_durations_are_accepted(cli) -> None:
    code, output = cli("keys", "create", "--tenant", "acme", "--name", "month", "--expires", "30d")
    assert code == 0, output
    code, output = cli("keys", "list", "--json")
    expires = datetime.fromisoformat(json.loads(output)[0]["expires_at"])
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    assert cli("usage", "--since", "7d", "--until", date.today().isoformat())[0] == 0


def test_limits_change_only_what_is_given_and_default_resets(cli) -> None:
    cli("tenants", "limits", "acme", "--rpm", "7", "--tpm", "700")
    cli("tenants", "limits", "acme", "--tpm", "900", "--weight", "3")
    tenant = json.loads(cli("tenants", "list", "--json")[1])[0]
    assert (tenant["rpm"], tenant["tpm"], tenant["weight"]) == (7, 900, 3)
    cli("tenants", "limits", "acme", "--rpm", "default")
    tenant = json.loads(cli("tenants", "list", "--json")[1])[0]
    assert (tenant["rpm"], tenant["tpm"], tenant["weight"]) == (None, 900, 3)


def test_lists_print_full_ids_wrapped_not_cut(cli) -> None:
    cli("keys", "create", "--tenant", "acme", "--name", "a-rather-long-key-label-that-needs-room", "--models",
        "model-with-a-long-name-one,model-with-a-long-name-two")
    key = json.loads(cli("keys", "list", "--json")[1])[0]
    code, table = cli("keys", "list")  # 12 columns in 80: every cell folds
    assert code == 0 and "…" not in table
    lines = [line.strip("│").split("│") for line in table.splitlines() if line.startswith("│")]
    columns = ["".join(parts).replace(" ", "") for parts in zip(*lines, strict=True)]  # one row: unfold each cell
    assert columns[:3] == [key["id"], "acme", key["name"]]
    assert key["prefix"] in columns and "['model-with-a-long-name-one','model-with-a-long-name-two']" in columns
    for command in (["tenants", "list"], ["prices", "list"], ["deployments", "list"],
                    ["deployments", "list", "--kind", "remote"], ["aliases", "list"], ["audit", "list"],
                    ["credits", "show", "acme"], ["usage"]):
        code, output = cli(*command, "--json")
        assert code == 0 and isinstance(json.loads(output), list | dict), (command, output)
