"""Loading prices into the store: the shipped snapshot, and syncing LiteLLM's catalogue from a URL or file."""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from relaymeter.pricing.catalogue import Pricer, entries_from_catalogue
from relaymeter.pricing.litellm import CatalogueError, ParseResult, parse_bytes
from relaymeter.store import prices as price_store
from relaymeter.store.db import Database

MAX_CATALOGUE_BYTES = 64 * 1024 * 1024
SNAPSHOT_RESOURCE = "model_prices.json"


class SyncError(Exception):
    """The catalogue could not be fetched or read; the message says what to fix."""


def snapshot_bytes() -> bytes:
    return (importlib.resources.files("relaymeter.pricing") / "data" / SNAPSHOT_RESOURCE).read_bytes()


def load_snapshot() -> ParseResult:
    return parse_bytes(snapshot_bytes())


async def ensure_snapshot(db: Database) -> bool:
    """Store the shipped snapshot's rows when they differ from the stored ones; True if written."""
    content = snapshot_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if await price_store.snapshot_digest(db) == digest:
        return False
    parsed = parse_bytes(content)
    await price_store.replace_origin(
        db, "snapshot", entries_from_catalogue(parsed.entries, "snapshot"), digest=digest
    )
    return True


async def prepare_pricer(db: Database) -> Pricer:
    """Snapshot stored (if new), then every stored price loaded: the writer's pricer at start."""
    await ensure_snapshot(db)
    return await price_store.load_pricer(db)


@dataclass(slots=True)
class SyncResult:
    source: str
    models: int
    added: int
    updated: int
    removed: int
    unchanged: int
    unpriced: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "models": self.models,
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "unpriced": self.unpriced,
            "skipped": [{"model": m, "reason": r} for m, r in self.skipped[:100]],
            "skipped_count": len(self.skipped),
        }


async def fetch_url(url: str, *, timeout_s: float = 60.0) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise SyncError(f"catalogue URL must start with http:// or https://, got {url[:80]!r}")
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client,
            client.stream("GET", url) as res,
        ):
            if res.status_code != 200:
                raise SyncError(f"GET {url} answered HTTP {res.status_code}; check the URL")
            chunks: list[bytes] = []
            size = 0
            async for chunk in res.aiter_bytes():
                size += len(chunk)
                if size > MAX_CATALOGUE_BYTES:
                    raise SyncError(f"catalogue at {url} is larger than {MAX_CATALOGUE_BYTES // 2**20} MiB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise SyncError(f"could not fetch {url}: {type(exc).__name__}: {exc}") from None


def read_file(path: str | Path) -> bytes:
    p = Path(path).expanduser()
    try:
        if p.stat().st_size > MAX_CATALOGUE_BYTES:
            raise SyncError(f"{p} is larger than {MAX_CATALOGUE_BYTES // 2**20} MiB")
        return p.read_bytes()
    except FileNotFoundError:
        raise SyncError(f"no such file: {p}") from None
    except IsADirectoryError:
        raise SyncError(f"{p} is a directory, expected a JSON file") from None
    except OSError as exc:
        raise SyncError(f"cannot read {p}: {exc.strerror or exc}") from None


async def sync_content(db: Database, content: bytes, source: str) -> SyncResult:
    """Replace the 'synced' prices with the catalogue in ``content`` (LiteLLM JSON)."""
    try:
        parsed = parse_bytes(content)
    except CatalogueError as exc:
        raise SyncError(f"{source}: {exc}") from None
    stats = await price_store.replace_origin(db, "synced", entries_from_catalogue(parsed.entries, "synced"))
    return SyncResult(
        source=source,
        models=len(parsed.entries),
        added=stats.added,
        updated=stats.updated,
        removed=stats.removed,
        unchanged=stats.unchanged,
        unpriced=parsed.unpriced,
        skipped=parsed.skipped,
    )


async def sync(db: Database, *, url: str | None = None, file: str | Path | None = None) -> SyncResult:
    """Sync from a file when given, else from the URL."""
    if file is not None:
        return await sync_content(db, read_file(file), str(file))
    if not url:
        raise SyncError("give a catalogue URL or file")
    return await sync_content(db, await fetch_url(url), url)
