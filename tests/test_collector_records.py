"""Records normalized in a worker process give exactly the events and dead letters of inline
normalization, and a worker that dies costs no record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson

from relaymeter.ingest.cliproxy.management import split_json_array
from relaymeter.ingest.cliproxy.records import RecordNormalizer, normalize_records
from tests.fakes.cpa import make_record


def batch() -> list[object]:
    items: list[object] = [orjson.dumps(make_record(i)).decode() for i in range(150)]
    items[7] = "{not json"
    items[20] = orjson.dumps({"model": "x", "api_key": "sk-secret-value-123456"}).decode()  # no timestamp
    items.append(make_record(999))  # an already parsed record (RESP, spool replay)
    return items


async def test_worker_results_equal_inline_results() -> None:
    items = batch()
    inline = normalize_records(items, source="cpa:t", received_ms=None, keep_raw=True)
    normalizer = RecordNormalizer(workers=1)
    try:
        events, bad = await normalizer(items, source="cpa:t", received_ms=None, keep_raw=True)
        assert normalizer._pool is not None  # the batch really went to the worker
    finally:
        normalizer.close()
    assert events == inline[0] and len(events) == 149
    assert bad == inline[1]
    assert [reason.split(":")[0] for reason, _raw in bad] == ["record is not valid JSON", "timestamp"]
    assert "sk-secret-value-123456" not in bad[1][1]  # dead letters are stored redacted


async def test_a_batch_shipped_as_its_json_text_gives_the_same_results() -> None:
    records = [make_record(i) for i in range(100)]
    records[5] = "{not json"  # CPA sends a record it could not parse as a JSON string
    records[9] = {"model": "x", "api_key": "sk-secret-value-123456"}  # no timestamp
    body = orjson.dumps(records)
    popped = split_json_array(body, keep_items=False)
    assert len(popped) == 100 and not popped.items and popped.body == body.decode()
    inline = normalize_records(records, source="cpa:t", received_ms=None, keep_raw=True)
    normalizer = RecordNormalizer(workers=1)
    try:
        assert normalizer.ships(len(popped))
        shipped = await normalizer(None, source="cpa:t", received_ms=None, keep_raw=True, body=popped.body)
    finally:
        normalizer.close()
    inline_too = await RecordNormalizer(workers=0)(
        None, source="cpa:t", received_ms=None, keep_raw=True, body=popped.body
    )
    assert shipped == inline == inline_too
    assert len(shipped[0]) == 98 and len(shipped[1]) == 2


async def test_a_dead_worker_falls_back_to_inline_work() -> None:
    items = batch()
    normalizer = RecordNormalizer(workers=1)
    try:
        await normalizer(items, source="cpa:t", received_ms=0, keep_raw=False)
        pool = normalizer._pool
        assert pool is not None
        for pid in list(pool._processes):  # kill the worker as the OOM killer would
            os.kill(pid, signal.SIGKILL)
        events, bad = await normalizer(items, source="cpa:t", received_ms=0, keep_raw=False)
    finally:
        normalizer.close()
    assert len(events) == 150 and len(bad) == 1
    assert normalizer.workers == 0  # later batches stay in-process


def test_worker_exits_when_the_collector_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, os, signal, sys
            from relaymeter.ingest.cliproxy.records import RecordNormalizer
            from tests.fakes.cpa import make_record

            async def main():
                normalizer = RecordNormalizer(workers=1)
                await normalizer([make_record(i) for i in range(100)], source="s", received_ms=0, keep_raw=False)
                print(*normalizer._pool._processes, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "normalize worker outlived its collector"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
