"""`relaymeter report`: the CLI summary equals the store's, as a table and as JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from typer.testing import CliRunner

from relaymeter.cli import app
from relaymeter.store import events as store_events
from relaymeter.store import migrate
from relaymeter.store.db import Database
from tests.test_store_summary import BASE_MS, brute_force, make_events

DAY = 86_400_000


async def seed(tmp_path: Path) -> list:  # type: ignore[type-arg]
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'relaymeter.db'}")
    await migrate.upgrade(db)
    events = make_events(400, seed=31)
    await store_events.insert_batch(db, events)
    await db.dispose()
    return events


def test_report_json_and_table(tmp_path: Path) -> None:
    events = asyncio.run(seed(tmp_path))
    runner = CliRunner()
    env = {"RELAYMETER_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    base = [
        "--config",
        str(tmp_path / "none.toml"),
        "report",
        "custom",
        "--start",
        str(BASE_MS),
        "--end",
        str(BASE_MS + 3 * DAY),
    ]
    result = runner.invoke(app, [*base, "--json", "--tz", "Asia/Kolkata"], env=env)
    assert result.exit_code == 0, result.output
    data = orjson.loads(result.output)
    expected = brute_force(events, BASE_MS, BASE_MS + 3 * DAY)
    assert data["totals"]["requests"] == expected["totals"][0]
    assert data["totals"]["total_tokens"] == expected["totals"][6]
    assert data["range"] == {"name": "custom", "tz": "Asia/Kolkata"}
    table = runner.invoke(app, base, env=env)
    assert table.exit_code == 0
    assert f"{expected['totals'][0]:,}" in table.output
    assert "by model" in table.output and "claude-sonnet-4-5" in table.output


def test_report_rejects_a_bad_range(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["--config", str(tmp_path / "none.toml"), "report", "fortnight"],
        env={"RELAYMETER_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1
    assert "unknown range 'fortnight'" in result.output
