"""kill -9 of a real `relaymeter collect` process between pop and insert loses no record."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.cpa import FakeCPA, FakeCPAThread, make_auth_file, make_record

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYMETER_")}
    env.update(
        RELAYMETER_DATA_DIR=str(tmp_path / "data"),
        RELAYMETER_CONFIG=str(tmp_path / "no-config.toml"),
        RELAYMETER_LOG_LEVEL="warning",
        RELAYMETER_WRITER_LINGER_MS="5",
    )
    env.update(extra)
    return env


def _cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaymeter", *args],
        env=_env(tmp_path),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _counts(tmp_path: Path) -> tuple[int, int, int]:
    """(events, distinct event hashes, spooled records) read straight from the SQLite file.

    Each spool row is one popped batch: a JSON array of records."""
    conn = sqlite3.connect(tmp_path / "data" / "relaymeter.db")
    try:
        events = conn.execute("SELECT count(*), count(DISTINCT event_hash) FROM usage_events").fetchone()
        spool = sum(len(json.loads(raw)) for (raw,) in conn.execute("SELECT raw FROM collector_spool"))
    finally:
        conn.close()
    return int(events[0]), int(events[1]), int(spool)


def _kill_at(tmp_path: Path, point: str) -> None:
    """Run `relaymeter collect` until it reaches ``point`` with a batch in hand, then SIGKILL it."""
    marker = tmp_path / f"held-{point}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaymeter", "collect"],
        env=_env(tmp_path, RELAYMETER_TEST_COLLECTOR_HOLD=f"{point}:{marker}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180  # generous: the machine may be busy
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"collector exited early: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail("collector never reached the hold point")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_9_between_pop_and_insert_loses_nothing(tmp_path: Path) -> None:
    thread = FakeCPAThread(FakeCPA(retention_s=3600))
    fake = thread.start()
    try:
        thread.call(lambda: fake.auth_files.extend(make_auth_file(i) for i in range(7)))
        thread.call(lambda: fake.push_many([make_record(i) for i in range(1000)]))
        added = _cli(
            tmp_path,
            "cpa",
            "add",
            "main",
            fake.url,
            "--key",
            "-",
            "--batch-size",
            "300",
            "--yes",
            stdin="mgmt-secret\n",
        )
        assert added.returncode == 0, added.stderr

        # 1. Killed right after a popped batch was spooled, before it was parsed or stored.
        _kill_at(tmp_path, "spooled")
        assert thread.call(lambda: fake.popped_total) == 300  # gone from CPA ...
        assert _counts(tmp_path) == (0, 0, 300)  # ... and only in the spool

        done = _cli(tmp_path, "collect", "--once", "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)[0]
        assert (status["replayed_total"], status["consumed_total"]) == (300, 700), done.stdout + done.stderr
        assert _counts(tmp_path) == (1000, 1000, 0)

        # 2. Killed after the events were stored but before their batch left the spool.
        # Exactly one batch is queued, so no other pop can be in flight at the kill (records
        # CPA sends while the process dies are lost by CPA's destructive pop, by design).
        thread.call(lambda: fake.push_many([make_record(i) for i in range(5000, 5300)]))
        _kill_at(tmp_path, "stored")
        assert _counts(tmp_path) == (1300, 1300, 300)

        done = _cli(tmp_path, "collect", "--once", "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)[0]
        replay = (status["replayed_total"], status["duplicates_total"], status["inserted_total"])
        assert replay == (300, 300, 0), done.stdout + done.stderr
        assert _counts(tmp_path) == (1300, 1300, 0)
        assert thread.call(lambda: fake.popped_total) == 1300
    finally:
        thread.stop()
