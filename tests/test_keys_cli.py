"""CLI: `relaymeter keys ...` and `relaymeter accounts ...` against a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relaymeter.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAYMETER_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("RELAYMETER_ADMIN_PASSWORD", "cli-test-password")
    return tmp_path


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=input)
    return result.exit_code, result.output


def test_keys_create_list_edit_disable_revoke(cli_env: Path) -> None:
    code, out = invoke("keys", "create", "alice", "--rpm", "10", "--daily-usd", "5", "--model", "claude-*")
    assert code == 0, out
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("sk-rm-")
    code, out = invoke("keys", "list", "--json")
    keys = json.loads(out)
    assert code == 0 and len(keys) == 1
    assert (keys[0]["name"], keys[0]["rpm"], keys[0]["daily_limit_usd"], keys[0]["models"]) == (
        "alice",
        10,
        5.0,
        ["claude-*"],
    )
    assert secret not in out
    code, out = invoke("keys", "edit", "alice", "--rpm", "20", "--no-budgets", "--any-model")
    assert code == 0, out
    key = json.loads(invoke("keys", "list", "--json")[1])[0]
    assert (key["rpm"], key["daily_limit_usd"], key["models"]) == (20, None, None)
    assert invoke("keys", "disable", str(key["id"]))[0] == 0
    assert json.loads(invoke("keys", "list", "--json")[1])[0]["enabled"] is False
    assert invoke("keys", "enable", key["prefix"])[0] == 0
    code, out = invoke("keys", "revoke", "alice", "--yes")
    assert code == 0 and "revoked" in out
    code, out = invoke("keys", "enable", "alice")
    assert code == 1 and "revoked" in out
    code, out = invoke("keys", "list", "--json")
    assert code == 0 and json.loads(out)[0]["revoked"] is True
    code, out = invoke("keys", "list")
    assert code == 0 and "alice" in out
    code, out = invoke("keys", "edit", "nobody", "--rpm", "1")
    assert code == 1 and "no API key" in out


def test_accounts_add_list_edit_disable_import_remove(cli_env: Path) -> None:
    code, out = invoke("accounts", "add", "main", "--provider", "claude", input="sk-ant-secret-from-prompt\n")
    assert code == 0, out
    code, out = invoke(
        "accounts",
        "add",
        "ds",
        "--provider",
        "openai-compatible",
        "--api-key",
        "sk-ds",
        "--base-url",
        "https://api.deepseek.com/v1",
        "--model",
        "deepseek-chat",
        "--map",
        "ds=deepseek-chat",
        "--daily-cost",
        "2.5",
    )
    assert code == 0, out
    listed = json.loads(invoke("accounts", "list", "--json")[1])
    by_name = {a["name"]: a for a in listed}
    assert by_name["main"]["provider"] == "anthropic" and by_name["main"]["credential"]["api_key"].startswith(
        "sk-ant"
    )
    assert "sk-ant-secret-from-prompt" not in invoke("accounts", "list", "--json")[1]
    assert (
        by_name["ds"]["model_map"] == {"ds": "deepseek-chat"} and by_name["ds"]["daily_cost_cap_usd"] == 2.5
    )
    code, out = invoke("accounts", "edit", "ds", "--priority", "3", "--no-caps")
    assert code == 0, out
    code, out = invoke("accounts", "disable", "main")
    assert code == 0
    by_name = {a["name"]: a for a in json.loads(invoke("accounts", "list", "--json")[1])}
    assert by_name["ds"]["priority"] == 3 and by_name["ds"]["daily_cost_cap_usd"] is None
    assert by_name["main"]["enabled"] is False and by_name["main"]["disabled_by"] == "user"
    bad = invoke("accounts", "add", "x", "--provider", "openai-compatible", "--api-key", "k")
    assert bad[0] == 1 and "base_url" in bad[1]

    csv_file = cli_env / "accounts.csv"
    csv_file.write_text("name,provider,api_key\nnew one,openai,sk-new\ndup,openai-compatible,sk-ds\n")
    code, out = invoke("accounts", "import", str(csv_file), "--dry-run")
    assert code == 1 and "would add" in out and "base_url" in out  # the dup row lacks base_url: failed
    assert len(json.loads(invoke("accounts", "list", "--json")[1])) == 2
    csv_file.write_text("name,provider,api_key\nnew one,openai,sk-new\n")
    code, out = invoke("accounts", "import", str(csv_file))
    assert code == 0 and "added 1" in out
    code, out = invoke("accounts", "remove", "new one", "--yes")
    assert code == 0
    assert sorted(a["name"] for a in json.loads(invoke("accounts", "list", "--json")[1])) == ["ds", "main"]
    assert invoke("accounts", "enable", "missing")[0] == 1
