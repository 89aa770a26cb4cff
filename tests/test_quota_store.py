"""quota_snapshots on SQLite and PostgreSQL: history, latest per window, pruning, observed accounts."""

from __future__ import annotations

from relaymeter.domain.events import UsageEvent
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import quotas as quota_store
from relaymeter.store.db import Database
from relaymeter.store.quotas import SnapshotRow

T0 = 1_767_225_600_000


def snap(account: int, window: str, used: float | None, at: int, origin: str = "oauth_usage") -> SnapshotRow:
    return SnapshotRow(
        account,
        window,
        used,
        None,
        None,
        at + 3_600_000,
        18_000,
        (used or 0) >= 100,
        origin,
        {"k": window},
        at,
    )


async def test_snapshots_latest_history_prune(db: Database) -> None:
    a = await quota_store.ensure_observed_account(
        db, "cpa:main", "abc123", name="alice@example.com", provider="claude"
    )
    assert (
        await quota_store.ensure_observed_account(db, "cpa:main", "abc123", name="x", provider="claude") == a
    )
    await quota_store.insert_snapshots(
        db,
        [
            snap(a, "five_hour", 10.0, T0),
            snap(a, "seven_day", 50.0, T0),
            snap(a, "five_hour", 20.0, T0 + 1000),
            snap(a, "a_future_window", None, T0 + 1000),
            snap(a, "requests", 5.0, T0 + 5000, origin="headers"),
            snap(a + 1, "five_hour", 100.0, T0 + 2000),
        ],
    )
    latest = await quota_store.latest(db, [a])
    assert [(r["window"], r["used_percent"]) for r in latest] == [
        ("a_future_window", None),
        ("five_hour", 20.0),
        ("requests", 5.0),
        ("seven_day", 50.0),
    ]
    assert latest[1]["extra"] == {"k": "five_hour"} and latest[1]["limit_reached"] is False
    # header snapshots are passive: they do not count as asking the provider
    assert await quota_store.last_fetched(db) == {a: T0 + 1000, a + 1: T0 + 2000}
    hist = await quota_store.history(db, a, window="five_hour")
    assert [h["used_percent"] for h in hist] == [10.0, 20.0]
    assert [h["used_percent"] for h in await quota_store.history(db, a, since_ms=T0 + 1, limit=1)] == [5.0]
    assert await quota_store.prune(db, T0 + 10_000) == 1  # only the older five_hour row
    assert len(await quota_store.latest(db)) == 5
    accounts = await quota_store.accounts_by_id(db, [a])
    assert (accounts[a]["origin"], accounts[a]["kind"], accounts[a]["name"]) == (
        "cpa:main",
        "observed",
        "alice@example.com",
    )


async def test_local_usage_per_account_start(db: Database) -> None:
    a = await quota_store.ensure_observed_account(db, "import", "a", name="a", provider="claude")
    b = await quota_store.ensure_observed_account(db, "import", "b", name="b", provider="claude")
    events = []
    for i, (acc, offset) in enumerate([(a, 0), (a, 2 * 3_600_000), (b, 0), (b, 2 * 3_600_000)]):
        ev = UsageEvent(
            event_hash=f"{i:064x}", ts_ms=T0 + offset, source="gateway", account_id=acc, input_tokens=10
        )
        ev.recompute_total()
        events.append(ev)
    writer = UsageWriter(db, linger_ms=0)
    writer.start()
    await writer.write(events)
    await writer.close()
    usage = await quota_store.local_usage(db, {a: T0, b: T0 + 3_600_000}, T0 + 5 * 3_600_000)
    assert (usage[a]["requests"], usage[b]["requests"]) == (2, 1)
    assert usage[a]["total_tokens"] == 20
