"""Settings precedence, clear errors for bad config, and `relaymeter config show`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from relaymeter.cli import app
from relaymeter.config import ConfigError, load_settings

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", 'port = 9000\ntimezone = "Asia/Kolkata"\n')
    monkeypatch.setenv("RELAYMETER_PORT", "9100")
    settings = load_settings(cfg)
    assert settings.port == 9100
    assert settings.timezone == "Asia/Kolkata"
    assert settings.host == "127.0.0.1"
    origins = settings.__dict__["_origins"]
    assert origins["port"] == "env RELAYMETER_PORT"
    assert origins["timezone"].startswith("file ")
    assert origins["host"] == "default"


def test_config_file_from_env_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", "[relaymeter]\nwriter_batch_size = 77\n")
    monkeypatch.setenv("RELAYMETER_CONFIG", str(cfg))
    assert load_settings().writer_batch_size == 77


def test_data_dir_from_env_sets_the_sqlite_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "d"))
    settings = load_settings(tmp_path / "none.toml")
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'relaymeter.db'}"


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("port = 70000\n", {}, "invalid config port (file "),
        ("", {"RELAYMETER_PORT": "abc"}, "invalid config port (env RELAYMETER_PORT)"),
        ('timezone = "Mars/Olympus"\n', {}, "unknown time zone 'Mars/Olympus'"),
        ('database_url = "mysql://x"\n', {}, "must start with sqlite+aiosqlite://"),
        ("portt = 1\n", {}, "unknown key 'portt'"),
        ("port = [\n", {}, "config file"),
    ],
)
def test_invalid_config_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, env: dict[str, str], message: str
) -> None:
    cfg = write(tmp_path / "c.toml", toml)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_show_masks_secrets_and_names_origins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path / "c.toml", 'database_url = "postgresql+asyncpg://u:hunter2@db:5432/x"\n')
    monkeypatch.setenv("RELAYMETER_ADMIN_PASSWORD", "s3cret-pass")
    result = runner.invoke(app, ["--config", str(cfg), "config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert "s3cret-pass" not in result.output and "hunter2" not in result.output
    data = orjson.loads(result.output)
    assert data["admin_password"] == {"value": "****", "origin": "env RELAYMETER_ADMIN_PASSWORD"}
    assert data["database_url"]["value"] == "postgresql+asyncpg://u:****@db:5432/x"


def test_bad_config_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.toml", "port = -1\n")
    result = runner.invoke(app, ["--config", str(cfg), "serve"])
    assert result.exit_code == 1
    assert "invalid config port" in result.output
