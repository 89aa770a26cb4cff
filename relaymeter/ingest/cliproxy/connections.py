"""Adding, editing and removing CPA connections (shared by the API and the CLI).

Values are validated here, the management key is encrypted with the state's SecretBox before
it reaches the store, a connection is checked against its CPA before it is saved (unless the
caller opts out), and a running collector is told to follow the change.
"""

from __future__ import annotations

import re
from typing import Any

from relaymeter.ingest.cliproxy.checks import CheckResult, check_cpa
from relaymeter.ingest.cliproxy.management import ManagementClient, normalize_base_url
from relaymeter.ingest.cliproxy.runner import MODES, ConnectionRunner, ConnectionSettings
from relaymeter.state import AppState
from relaymeter.store import collector as store
from relaymeter.store.collector import ConnectionExists, CPAConnectionRow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_POLL_MS = 100
MAX_POLL_MS = 1_800_000  # half of CPA's maximum retention (3600 s)
MAX_BATCH = 10_000
DEFAULT_BATCH = 1000  # records per pop: about 1 MB per answer

__all__ = [
    "CheckFailed",
    "ConnectionConflict",
    "ConnectionExists",
    "ConnectionInvalid",
    "add_connection",
    "edit_connection",
    "management_client",
    "remove_connection",
]


class ConnectionInvalid(ValueError):
    """A value that cannot be saved; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConnectionConflict(ValueError):
    """Another connection already consumes the same CPA (one consumer per CPA)."""


class CheckFailed(Exception):
    """The CPA check failed; nothing was saved."""

    def __init__(self, result: CheckResult) -> None:
        super().__init__(result.error or "CPA check failed")
        self.result = result


def validate(values: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Cleaned values (name, base_url, management_key, mode, batch_size, poll_interval_ms, enabled)."""
    out: dict[str, Any] = {}
    required = () if partial else ("name", "base_url", "management_key")
    for key in required:
        if values.get(key) in (None, ""):
            raise ConnectionInvalid(key, "is required")
    if values.get("name") is not None:
        name = str(values["name"]).strip()
        if not NAME_RE.match(name):
            raise ConnectionInvalid(
                "name", "use 1-64 letters, digits, '.', '_' or '-' (it becomes the event source cpa:<name>)"
            )
        out["name"] = name
    if values.get("base_url") is not None:
        try:
            out["base_url"] = normalize_base_url(str(values["base_url"]))
        except ValueError as exc:
            raise ConnectionInvalid("base_url", str(exc)) from None
    if values.get("management_key") is not None:
        key = str(values["management_key"]).strip()
        if not key:
            raise ConnectionInvalid("management_key", "is empty")
        if any(ch in key for ch in "\r\n"):
            raise ConnectionInvalid("management_key", "must be one line")
        out["management_key"] = key
    if values.get("mode") is not None:
        mode = str(values["mode"]).strip().lower()
        if mode not in MODES:
            raise ConnectionInvalid("mode", f"must be one of {', '.join(MODES)}")
        out["mode"] = mode
    if values.get("batch_size") is not None:
        batch = int(values["batch_size"])
        if not 1 <= batch <= MAX_BATCH:
            raise ConnectionInvalid("batch_size", f"must be between 1 and {MAX_BATCH}")
        out["batch_size"] = batch
    if values.get("poll_interval_ms") is not None:
        poll = int(values["poll_interval_ms"])
        if not MIN_POLL_MS <= poll <= MAX_POLL_MS:
            raise ConnectionInvalid(
                "poll_interval_ms", f"must be between {MIN_POLL_MS} and {MAX_POLL_MS} (ms)"
            )
        out["poll_interval_ms"] = poll
    if values.get("enabled") is not None:
        out["enabled"] = bool(values["enabled"])
    return out


async def _check_conflicts(state: AppState, values: dict[str, Any], own_id: int | None = None) -> None:
    for row in await store.list_connections(state.db):
        if row.id == own_id:
            continue
        if "name" in values and row.name == values["name"]:
            raise ConnectionExists(f"a CPA connection named {row.name!r} already exists")
        if "base_url" in values and row.base_url == values["base_url"]:
            raise ConnectionConflict(
                f"connection {row.name!r} already collects from {row.base_url}: CPA's usage queue "
                "allows one consumer, a second one would split its records"
            )


async def _reload(state: AppState) -> None:
    service = state.services.get("collector")
    if service is not None:
        await service.reload()


async def add_connection(
    state: AppState,
    values: dict[str, Any],
    *,
    check: bool = True,
    enable_publishing: bool = False,
) -> tuple[CPAConnectionRow, CheckResult | None]:
    """Validate, check against CPA (unless check=False), encrypt the key and save."""
    clean = validate(values)
    clean.setdefault("mode", "auto")
    clean.setdefault("batch_size", DEFAULT_BATCH)
    clean.setdefault("poll_interval_ms", 2000)
    clean.setdefault("enabled", True)
    await _check_conflicts(state, clean)
    result = None
    if check or enable_publishing:  # turning publishing on needs CPA anyway
        result = await check_cpa(
            clean["base_url"],
            clean["management_key"],
            mode=clean["mode"],
            poll_interval_ms=clean["poll_interval_ms"],
            enable_publishing=enable_publishing,
        )
        if not result.ok:
            raise CheckFailed(result)
    row_values = {k: v for k, v in clean.items() if k != "management_key"}
    row_values["management_key_enc"] = state.box.encrypt(clean["management_key"])
    row = await store.create_connection(state.db, row_values)
    await _reload(state)
    return row, result


async def edit_connection(
    state: AppState,
    connection_id: int,
    values: dict[str, Any],
    *,
    check: bool = True,
    enable_publishing: bool = False,
) -> tuple[CPAConnectionRow, CheckResult | None]:
    """Change a connection; re-checked against CPA when its URL, key, mode or poll interval change."""
    row = await store.get_connection(state.db, connection_id=connection_id)
    if row is None:
        raise LookupError(f"no CPA connection with id {connection_id}")
    clean = validate(values, partial=True)
    await _check_conflicts(state, clean, own_id=connection_id)
    result = None
    relevant = {"base_url", "management_key", "mode", "poll_interval_ms"} & clean.keys()
    if (check and relevant) or enable_publishing:
        try:
            key = clean.get("management_key") or state.box.decrypt(row.management_key_enc)
        except ValueError as exc:
            raise ConnectionInvalid("management_key", f"{exc}; send the management key again") from None
        result = await check_cpa(
            clean.get("base_url", row.base_url),
            key,
            mode=clean.get("mode", row.mode),
            poll_interval_ms=clean.get("poll_interval_ms", row.poll_interval_ms),
            enable_publishing=enable_publishing,
        )
        if not result.ok:
            raise CheckFailed(result)
    row_values = {k: v for k, v in clean.items() if k != "management_key"}
    if "management_key" in clean:
        row_values["management_key_enc"] = state.box.encrypt(clean["management_key"])
    if "name" in clean and clean["name"] != row.name:
        # Stop the old consumer first so nothing is spooled under the old name afterwards.
        service = state.services.get("collector")
        if service is not None:
            await service.stop_connection(connection_id)
        await store.rename_spool(state.db, row.name, clean["name"])
    # Always bump updated_ms so a running collector restarts this connection (e.g. after an
    # auth failure was fixed on the CPA side).
    updated = await store.update_connection(state.db, connection_id, row_values or {"enabled": row.enabled})
    assert updated is not None
    await _reload(state)
    return updated, result


async def remove_connection(state: AppState, connection_id: int) -> tuple[CPAConnectionRow, int]:
    """Delete a connection after storing what it still had spooled; returns (row, replayed)."""
    row = await store.get_connection(state.db, connection_id=connection_id)
    if row is None:
        raise LookupError(f"no CPA connection with id {connection_id}")
    await store.delete_connection(state.db, connection_id)
    await _reload(state)
    replayed = await replay_spool(state, row)
    return row, replayed


async def replay_spool(state: AppState, row: CPAConnectionRow) -> int:
    """Store a connection's spooled records (needs no CPA)."""
    runner = ConnectionRunner(
        ConnectionSettings(name=row.name, base_url=row.base_url, management_key="", mode=row.mode),
        db=state.db,
        writer=state.writer,
        holder="replay",
        keep_raw=state.settings.store_raw_payloads,
    )
    return await runner.replay_spool()


async def management_client(
    state: AppState, *, name: str | None = None, connection_id: int | None = None
) -> ManagementClient:
    """A ManagementClient for a saved connection (use ``async with``); for the quota engine's
    api-call passthrough and the CPA panel proxy. LookupError / ValueError when it cannot."""
    row = await store.get_connection(state.db, connection_id=connection_id, name=name)
    if row is None:
        raise LookupError(f"no CPA connection {name or connection_id!r}")
    return ManagementClient(row.base_url, state.box.decrypt(row.management_key_enc))
