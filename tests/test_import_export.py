"""Usage import (relaymeter / CPA-Manager JSONL, legacy CPA exports) and JSONL export."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from relaymeter.cli import app as cli_app
from relaymeter.domain.events import normalize
from relaymeter.ingest import files
from relaymeter.state import AppState
from relaymeter.store import collector as collector_store
from relaymeter.store import queries
from relaymeter.store.db import Database
from relaymeter.store.schema import api_keys, dead_letters, usage_events
from tests.collector_support import app_state, count, rows
from tests.conftest import open_db
from tests.fakes.cpa import make_record

BASE_MS = 1_795_000_000_000  # 2026-11-18
ALL_TIME = (0, 4_102_444_800_000)
PROVIDERS = ("claude", "codex", "gemini")
MODELS = ("claude-sonnet-4-5", "gpt-5", "gemini-2.5-pro")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


def varied_records(n: int) -> list[dict[str, Any]]:
    """CPA records spread over ~3 days, several models/providers/keys/accounts, some failed."""
    out = []
    for i in range(n):
        provider, model = PROVIDERS[i % 3], MODELS[i % 3]
        out.append(
            make_record(
                i,
                timestamp=_iso(BASE_MS + i * 97_000),
                auth_index=f"{i % 6:016x}",  # account k always serves provider k % 3
                source=f"user{i % 6}@example.com",
                provider=provider,
                model=model,
                alias=model,
                failed=i % 11 == 0,
                fail={"status_code": 500 if i % 11 == 0 else 200, "body": ""},
                endpoint=["POST /v1/messages", "POST /v1/responses", "POST /v1/chat/completions"][i % 3],
            )
        )
    return out


async def seed(state: AppState, records: list[dict[str, Any]], source: str = "cpa:main") -> None:
    events = [normalize(r, source=source, received_ms=BASE_MS) for r in records]
    await state.writer.write(events)
    # What the collector does after reading CPA's auth files.
    await collector_store.update_observed_accounts(
        state.db,
        source,
        [
            {"external_id": f"{k:016x}", "name": f"account {k}", "provider": PROVIDERS[k % 3]}
            for k in range(6)
        ],
    )


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without the row ids (they differ between stores), breakdowns sorted by name."""
    out = dict(summary)
    out["by_account"] = sorted(
        ({k: v for k, v in r.items() if k != "account_id"} for r in summary["by_account"]),
        key=lambda r: r["name"],
    )
    out["by_api_key"] = sorted(
        ({k: v for k, v in r.items() if k != "api_key_id"} for r in summary["by_api_key"]),
        key=lambda r: r["name"],
    )
    return out


async def export_to(db: Database, path: Path, **kw: Any) -> int:
    lines = 0
    with path.open("wb") as fh:
        async for chunk in files.export_jsonl(db, **kw):
            fh.write(chunk)
            lines += chunk.count(b"\n")
    return lines


async def test_export_import_round_trip_reproduces_summaries(
    db: Database, db_kind: str, tmp_path: Path
) -> None:
    async with app_state(db, tmp_path) as state:
        await seed(state, varied_records(2500))
        original = await queries.summary(db, *ALL_TIME)
        out = tmp_path / "usage.jsonl"
        assert await export_to(db, out) == 2500

    async with (
        open_db(db_kind, tmp_path / "second") as empty,
        app_state(empty, tmp_path / "second") as state2,
    ):
        first = await files.import_file(empty, state2.writer, out)
        assert (first.added, first.skipped, first.failed, first.format) == (2500, 0, 0, "relaymeter")
        await state2.writer.flush()
        copy = await queries.summary(empty, *ALL_TIME)
        assert comparable(copy) == comparable(original)
        assert copy["totals"]["requests"] == 2500

        again = await files.import_file(empty, state2.writer, out)
        assert (again.added, again.skipped, again.failed) == (0, 2500, 0)
        assert await count(empty) == 2500

        # A second export of the copy is the same file (same events, same order).
        out2 = tmp_path / "usage2.jsonl"
        await export_to(empty, out2)
        assert out2.read_bytes() == out.read_bytes()


async def test_export_range_and_filters(sqlite_db: Database, tmp_path: Path) -> None:
    async with app_state(sqlite_db, tmp_path) as state:
        await seed(state, varied_records(300))
        out = tmp_path / "part.jsonl"
        start, end = BASE_MS + 100 * 97_000, BASE_MS + 200 * 97_000
        n = await export_to(
            sqlite_db,
            out,
            start_ms=start,
            end_ms=end,
            filters=queries.Filters(models=("gpt-5",), status="success"),
        )
        records = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert n == len(records) > 0
        assert all(r["actual_model"] == "gpt-5" and not r["failed"] for r in records)
        assert all(start <= r["ts_ms"] < end for r in records)
        assert [r["ts_ms"] for r in records] == sorted(r["ts_ms"] for r in records)
        assert all(r["source"] == "cpa:main" and r["account_label"].startswith("account ") for r in records)
        assert all(r["api_key_prefix"].startswith("sk-cli") for r in records)


def cpa_manager_line(i: int) -> dict[str, Any]:
    ts = BASE_MS + i * 1000
    return {
        "request_id": f"{i:08x}",
        "event_hash": hashlib.sha256(f"cpam-{i}".encode()).hexdigest(),
        "timestamp_ms": ts,
        "timestamp": _iso(ts),
        "provider": "claude",
        "model": "claude-sonnet-4-5",
        "endpoint": "POST /v1/messages",
        "method": "POST",
        "path": "/v1/messages",
        "auth_type": "oauth",
        "auth_index": "a1b2c3d4e5f60718",
        "source": "ali***@example.com",
        "source_hash": hashlib.sha256(b"alice@example.com").hexdigest(),
        "api_key_hash": hashlib.sha256(b"sk-client-key").hexdigest(),
        "input_tokens": 100,
        "output_tokens": 50,
        "reasoning_tokens": 0,
        "cached_tokens": 0,
        "cache_tokens": 0,
        "total_tokens": 150,
        "latency_ms": 1200,
        "failed": False,
        "raw_json": json.dumps({"api_key": "sk-client-key", "model": "claude-sonnet-4-5"}),
        "created_at_ms": ts + 5,
    }


async def test_cpa_manager_jsonl_keeps_its_event_hashes(db: Database, tmp_path: Path) -> None:
    lines = [cpa_manager_line(i) for i in range(50)]
    path = tmp_path / "cpa-manager.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    async with app_state(db, tmp_path) as state:
        result = await files.import_file(db, state.writer, path)
        assert (result.added, result.failed, result.format) == (50, 0, "cpa-manager")
        stored = await rows(db, usage_events)
        assert {e["event_hash"] for e in stored} == {line["event_hash"] for line in lines}
        assert {e["source"] for e in stored} == {"import"}
        assert {e["api_key_hash"] for e in stored} == {hashlib.sha256(b"sk-client-key").hexdigest()}
        assert all("sk-client-key" not in (e["raw_json"] or "") for e in stored)
        keys = await rows(db, api_keys)
        assert [k["origin"] for k in keys] == ["observed"]
        again = await files.import_file(db, state.writer, path, source="cpa:main")
        assert (again.added, again.skipped) == (0, 50)


def legacy_export(details: bool = True) -> dict[str, Any]:
    def detail(i: int) -> dict[str, Any]:
        return {
            "timestamp": _iso(BASE_MS + i * 60_000),
            "latency_ms": 800 + i,
            "source": "bob@example.com",
            "auth_index": i % 2,  # older CPAs sent a number
            "tokens": {
                "input_tokens": 10 * i,
                "output_tokens": 5,
                "reasoning_tokens": 0,
                "cached_tokens": 0,
                "total_tokens": 10 * i + 5,
            },
            "failed": i == 3,
        }

    models = {
        "claude-sonnet-4-5": {
            "total_requests": 4,
            "total_tokens": 100,
            "details": [detail(i) for i in range(4)] if details else [],
        },
        "gpt-5": {
            "total_requests": 2,
            "total_tokens": 30,
            "details": [detail(i) for i in range(10, 12)] if details else [],
        },
    }
    return {
        "version": 1,
        "exported_at": "2026-11-20T10:00:00Z",
        "usage": {
            "total_requests": 8,
            "success_count": 7,
            "failure_count": 1,
            "total_tokens": 160,
            "apis": {
                "sk-client-legacy-key-123": {"total_requests": 6, "total_tokens": 130, "models": models},
                "POST /v1/chat/completions": {
                    "total_requests": 2,
                    "total_tokens": 30,
                    "models": {
                        "gpt-4o": {
                            "total_requests": 2,
                            "total_tokens": 30,
                            "details": [detail(20), detail(21)] if details else [],
                        }
                    },
                },
            },
            "requests_by_day": {"2026-11-18": 8},
            "requests_by_hour": {},
            "tokens_by_day": {},
            "tokens_by_hour": {},
        },
    }


async def test_legacy_cpa_export_with_details_imports(sqlite_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "usage-export.json"
    path.write_text(json.dumps(legacy_export(), indent=2))  # pretty-printed, as CPA wrote it
    async with app_state(sqlite_db, tmp_path) as state:
        result = await files.import_file(sqlite_db, state.writer, path)
        assert (result.added, result.failed, result.format) == (8, 0, "cpa-legacy")
        stored = await rows(sqlite_db, usage_events)
        by_model: dict[str, list[dict[str, Any]]] = {}
        for e in stored:
            by_model.setdefault(e["model"], []).append(e)
        assert sorted(by_model) == ["claude-sonnet-4-5", "gpt-4o", "gpt-5"]
        assert {e["endpoint"] for e in by_model["gpt-4o"]} == {"POST /v1/chat/completions"}
        legacy_hash = hashlib.sha256(b"sk-client-legacy-key-123").hexdigest()
        assert {e["api_key_hash"] for e in by_model["gpt-5"]} == {legacy_hash}
        assert {e["auth_index"] for e in stored} == {"0", "1"}
        assert sum(e["failed"] for e in stored) == 1  # only detail(3) failed
        again = await files.import_file(sqlite_db, state.writer, path)
        assert (again.added, again.skipped) == (0, 8)


async def test_aggregate_only_legacy_export_is_refused(sqlite_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "aggregate.json"
    path.write_text(json.dumps(legacy_export(details=False)))
    async with app_state(sqlite_db, tmp_path) as state:
        result = await files.import_file(sqlite_db, state.writer, path)
        assert result.added == 0
        assert result.error is not None and "only aggregate counts" in result.error
        assert await count(sqlite_db) == 0


async def test_bad_lines_are_reported_with_line_numbers_and_dead_lettered(
    sqlite_db: Database, tmp_path: Path
) -> None:
    good = [orjson.dumps(r).decode() for r in varied_records(3)]
    no_time = make_record(99)
    del no_time["timestamp"]
    text = "\n".join(
        [
            good[0],
            '{"timestamp": "2026-11-20T10:00:00Z", "model": ',  # line 2: cut off
            good[1],
            orjson.dumps(no_time).decode(),  # line 4: no timestamp in a file is an error
            "",
            "[1, 2, 3]",  # line 6
            good[2],
        ]
    )
    path = tmp_path / "mixed.jsonl"
    path.write_text(text)
    async with app_state(sqlite_db, tmp_path) as state:
        result = await files.import_file(sqlite_db, state.writer, path)
        assert (result.added, result.failed, result.records) == (3, 3, 6)
        assert [f["line"] for f in result.failures] == ["line 2", "line 4", "line 6"]
        assert "not valid JSON" in result.failures[0]["reason"]
        assert result.failures[1]["reason"].startswith("timestamp: missing")
        letters = await rows(sqlite_db, dead_letters, order=dead_letters.c.id)
        assert [d["source"] for d in letters] == ["import"] * 3
        assert letters[0]["reason"].startswith(f"{path} line 2: ")
        assert result.dead_lettered == 3


async def test_jsonl_with_broken_first_lines_and_files_that_are_not_usage(
    sqlite_db: Database, tmp_path: Path
) -> None:
    good = [orjson.dumps(r).decode() for r in varied_records(4)]
    broken = tmp_path / "broken-start.jsonl"
    broken.write_text("\n".join(['{"timestamp": 1', '{"model": ', *good]))
    csv = tmp_path / "usage.csv"
    csv.write_text("timestamp,model,tokens\n2026-11-20,gpt-5,100\n")
    async with app_state(sqlite_db, tmp_path) as state:
        result = await files.import_file(sqlite_db, state.writer, broken)
        assert (result.added, result.failed, result.error) == (4, 2, None)
        assert [f["line"] for f in result.failures] == ["line 1", "line 2"]
        result = await files.import_file(sqlite_db, state.writer, csv)
        assert (result.added, result.failed) == (0, 2)
        assert result.error is not None and "nothing in this file could be imported" in result.error


async def test_gzip_and_json_array_files(sqlite_db: Database, tmp_path: Path) -> None:
    records = varied_records(40)
    gz = tmp_path / "records.jsonl.gz"
    gz.write_bytes(gzip.compress(b"\n".join(orjson.dumps(r) for r in records[:20])))
    array = tmp_path / "records.json"
    array.write_bytes(orjson.dumps(records[20:]))
    async with app_state(sqlite_db, tmp_path) as state:
        assert (await files.import_file(sqlite_db, state.writer, gz)).added == 20
        result = await files.import_file(sqlite_db, state.writer, array)
        assert (result.added, result.format) == (20, "cpa")
        missing = await files.import_file(sqlite_db, state.writer, tmp_path / "nope.jsonl")
        assert missing.error is not None and "no such file" in missing.error


async def test_import_streams_in_batches_before_the_file_ends(sqlite_db: Database, tmp_path: Path) -> None:
    records = varied_records(12_000)
    lines = b"\n".join(orjson.dumps(r) for r in records) + b"\n"
    written_when: list[int] = []

    async with app_state(sqlite_db, tmp_path) as state:

        async def chunks() -> AsyncIterator[bytes]:
            step = len(lines) // 60 + 1
            for start in range(0, len(lines), step):
                written_when.append(state.writer.stats.written)
                yield lines[start : start + step]

        result = await files.import_chunks(sqlite_db, state.writer, chunks(), name="stream")
        assert result.added == 12_000
        # Events were already stored while most of the input was still unread.
        assert written_when[30] > 0
        assert written_when[-1] < 12_000


# --- API and CLI ------------------------------------------------------------------------------------


async def test_import_and_export_over_the_api(app_client: httpx.AsyncClient, tmp_path: Path) -> None:
    body = b"\n".join(orjson.dumps(r) for r in varied_records(120))
    res = await app_client.post("/api/usage/import?name=cpa.jsonl&source=cpa:old", content=body)
    assert res.status_code == 200, res.text
    assert {k: res.json()[k] for k in ("file", "format", "added", "skipped", "failed")} == {
        "file": "cpa.jsonl",
        "format": "cpa",
        "added": 120,
        "skipped": 0,
        "failed": 0,
    }
    res = await app_client.get("/api/usage/export")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in res.headers["content-disposition"]
    exported = [orjson.loads(line) for line in res.content.splitlines()]
    assert len(exported) == 120 and {r["source"] for r in exported} == {"cpa:old"}
    assert all(r["raw_json"] for r in exported)
    res = await app_client.get("/api/usage/export", params={"raw": "false"})
    assert all(orjson.loads(line)["raw_json"] is None for line in res.content.splitlines())

    res = await app_client.get(
        "/api/usage/export",
        params={"model": "gemini-2.5-pro", "start": str(BASE_MS), "end": str(BASE_MS + 3_600_000)},
    )
    subset = [orjson.loads(line) for line in res.content.splitlines()]
    assert subset and all(
        r["actual_model"] == "gemini-2.5-pro" and r["ts_ms"] < BASE_MS + 3_600_000 for r in subset
    )

    res = await app_client.post("/api/usage/import", content=res.content)
    assert (res.json()["added"], res.json()["skipped"]) == (0, len(subset))

    res = await app_client.post(
        "/api/usage/import?name=agg.json", content=json.dumps(legacy_export(details=False)).encode()
    )
    assert res.status_code == 422
    assert res.json()["error"]["code"] == "import_refused"
    assert "aggregate" in res.json()["error"]["message"]

    res = await app_client.post("/api/usage/import?source=bad source", content=body)
    assert res.status_code == 422


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("RELAYMETER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAYMETER_CONFIG", str(tmp_path / "no-config.toml"))
    yield tmp_path


def test_cli_import_export(cli_env: Path) -> None:
    runner = CliRunner()
    good = cli_env / "good.jsonl"
    good.write_bytes(b"\n".join(orjson.dumps(r) for r in varied_records(200)))
    bad = cli_env / "bad.jsonl"
    bad.write_text(orjson.dumps(varied_records(1)[0]).decode() + "\nnot json at all\n")

    res = runner.invoke(cli_app, ["import", str(good), str(bad)])
    assert res.exit_code == 1  # a failed record makes the exit code non-zero
    flat = " ".join(res.output.split())
    assert "added 200, skipped 1 already stored, failed 1" in flat
    assert f"{bad} line 2: not valid JSON" in flat

    res = runner.invoke(cli_app, ["import", str(good), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)[0]["skipped"] == 200

    out = cli_env / "out" / "usage.jsonl.gz"
    res = runner.invoke(cli_app, ["export", "-o", str(out), "--model", "gpt-5"])
    assert res.exit_code == 0, res.output
    exported = [orjson.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert len(exported) == 67 and {r["actual_model"] for r in exported} == {"gpt-5"}

    res = runner.invoke(
        cli_app, ["export", "custom", "--start", str(BASE_MS), "--end", str(BASE_MS + 97_000 * 10)]
    )
    assert res.exit_code == 0
    assert len(res.stdout.splitlines()) == 10

    res = runner.invoke(cli_app, ["export", "--no-raw", "--model", "gemini-2.5-pro"])
    slim = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert len(slim) == 66 and all(r["raw_json"] is None for r in slim)

    res = runner.invoke(cli_app, ["export", "--status", "maybe"])
    assert res.exit_code == 1
