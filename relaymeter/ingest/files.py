"""Streaming import of usage files and streaming JSONL export.

Import accepts relaymeter's JSONL export, CPA-Manager's JSONL export (its event_hash is kept),
raw CPA queue records (JSONL or a JSON array) and legacy CPA usage exports whose
``usage.apis.*.models.*.details[]`` hold per-request records (aggregate-only files are refused).
JSONL is read line by line and written in batches through the single write path, so files
of any size import in constant memory; gzip input is recognised by its magic bytes. The same
event hash makes a second import of a file add nothing.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relaymeter.domain.events import (
    EVENT_FIELDS,
    EXPORT_MARKER,
    NormalizeError,
    UsageEvent,
    normalize,
    to_export_record,
)
from relaymeter.domain.redact import mask_key, redact
from relaymeter.ingest.writer import UsageWriter
from relaymeter.store import events as store_events
from relaymeter.store import export as store_export
from relaymeter.store.db import Database
from relaymeter.store.queries import Filters

IMPORT_BATCH = 2000
MAX_INFLIGHT_WRITES = 2
MAX_FAILURE_SAMPLES = 20
MAX_DEAD_LETTERS = 10_000  # per import; beyond this failures are only counted
READ_CHUNK = 1 << 20
DOCUMENT_LIMIT = 256 << 20  # a single-document file (legacy CPA export) larger than this is JSONL
DEFAULT_SOURCE = "import"

ProgressFn = Callable[["ImportResult", int], None]


class ImportRefused(ValueError):
    """A file that cannot be imported as a whole; the message says why and what to use."""


@dataclass
class ImportResult:
    name: str
    formats: set[str] = field(default_factory=set)
    records: int = 0
    added: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # first ones: {line, reason}
    error: str | None = None  # the whole file was refused

    @property
    def format(self) -> str:
        if not self.formats:
            return "empty" if self.error is None else "unknown"
        return "+".join(sorted(self.formats))

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "format": self.format,
            "records": self.records,
            "added": self.added,
            "skipped": self.skipped,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "failures": self.failures,
            "error": self.error,
        }

    def merge(self, other: ImportResult) -> None:
        self.formats |= other.formats
        self.records += other.records
        self.added += other.added
        self.skipped += other.skipped
        self.failed += other.failed
        self.dead_lettered += other.dead_lettered
        room = MAX_FAILURE_SAMPLES - len(self.failures)
        self.failures.extend({"file": other.name, **f} for f in other.failures[: max(room, 0)])


def record_format(record: dict[str, Any]) -> str:
    if record.get(EXPORT_MARKER):
        return "relaymeter"
    if "event_hash" in record and ("timestamp_ms" in record or "created_at_ms" in record):
        return "cpa-manager"
    return "cpa"


# --- reading ------------------------------------------------------------------------------


async def file_chunks(path: Path, chunk: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read off the event loop."""
    fh = await asyncio.to_thread(path.open, "rb")
    try:
        while True:
            data = await asyncio.to_thread(fh.read, chunk)
            if not data:
                return
            yield data
    finally:
        fh.close()


async def _lines(
    chunks: AsyncIterable[bytes], on_bytes: Callable[[int], None]
) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) pairs; gzip input is decompressed on the fly."""
    tail = b""
    lineno = 0
    decomp: Any = None
    first = True
    async for chunk in chunks:
        if not chunk:
            continue
        on_bytes(len(chunk))
        if first:
            first = False
            if chunk[:2] == b"\x1f\x8b":
                decomp = zlib.decompressobj(wbits=47)
        data = decomp.decompress(chunk) if decomp is not None else chunk
        if not data:
            continue
        parts = (tail + data).split(b"\n")
        tail = parts.pop()
        for part in parts:
            lineno += 1
            yield lineno, part
    if decomp is not None:
        try:
            rest = decomp.flush()
        except zlib.error:
            rest = b""
        if rest:
            parts = (tail + rest).split(b"\n")
            tail = parts.pop()
            for part in parts:
                lineno += 1
                yield lineno, part
    if tail:
        yield lineno + 1, tail


# --- legacy CPA usage exports ------------------------------------------------------------------


def _looks_like_endpoint(key: str) -> bool:
    method, _, path = key.partition(" ")
    return path.startswith("/") and method.isalpha() and method.isupper()


def _snapshot(doc: dict[str, Any]) -> dict[str, Any]:
    usage = doc.get("usage")
    return usage if isinstance(usage, dict) else doc


def is_legacy_document(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    snap = _snapshot(doc)
    return isinstance(snap.get("apis"), dict) or (
        "total_requests" in snap and ("requests_by_day" in snap or "apis" in snap)
    )


def legacy_records(doc: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """(where, record) for every details[] entry of a CPA usage snapshot.

    Raises ImportRefused for aggregate-only files (counts without per-request details).
    """
    snap = _snapshot(doc)
    apis = snap.get("apis")
    if not isinstance(apis, dict):
        apis = {}
    has_details = any(
        isinstance(model, dict) and isinstance(model.get("details"), list) and model["details"]
        for api in apis.values()
        if isinstance(api, dict) and isinstance(api.get("models"), dict)
        for model in api["models"].values()
    )
    if not has_details:
        total = snap.get("total_requests") or 0
        if apis or (isinstance(total, int) and total > 0):
            raise ImportRefused(
                "this CPA usage export holds only aggregate counts (no usage.apis.*.models.*.details[] "
                "per request), which cannot become per-request events; export with request details "
                "(CPA's /usage/export) or import CPA-Manager's JSONL export instead"
            )
        return []
    return _iter_legacy(apis)


def _iter_legacy(apis: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    for api_name, api in apis.items():
        if not isinstance(api, dict) or not isinstance(api.get("models"), dict):
            continue
        shown = api_name if _looks_like_endpoint(api_name) else mask_key(api_name)
        for model_name, model in api["models"].items():
            details = model.get("details") if isinstance(model, dict) else None
            if not isinstance(details, list):
                continue
            for i, detail in enumerate(details):
                where = f"usage.apis[{shown}].models[{model_name}].details[{i}]"
                if not isinstance(detail, dict):
                    yield where, detail
                    continue
                record = dict(detail)
                record.setdefault("model", model_name)
                if _looks_like_endpoint(api_name):
                    record.setdefault("endpoint", api_name)
                elif api_name:
                    record.setdefault("api_key", api_name)
                yield where, record


# --- import -----------------------------------------------------------------------------------


class _Importer:
    def __init__(
        self,
        db: Database,
        writer: UsageWriter,
        result: ImportResult,
        *,
        source: str,
        keep_raw: bool,
        progress: ProgressFn | None,
    ) -> None:
        self.db = db
        self.writer = writer
        self.result = result
        self.source = source
        self.keep_raw = keep_raw
        self.progress = progress
        self.batch: list[UsageEvent] = []
        self.batch_where: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.inflight: list[asyncio.Task[None]] = []
        self.bytes_read = 0

    def on_bytes(self, n: int) -> None:
        self.bytes_read += n

    def fail(self, where: str, reason: str, raw: str) -> None:
        res = self.result
        res.failed += 1
        if len(res.failures) < MAX_FAILURE_SAMPLES:
            res.failures.append({"line": where, "reason": reason})
        if res.dead_lettered + len(self.dead) < MAX_DEAD_LETTERS:
            self.dead.append((f"{res.name} {where}: {reason}", raw))

    async def record(self, where: str, obj: Any, *, classify: bool = True) -> None:
        self.result.records += 1
        if not isinstance(obj, dict):
            self.fail(where, f"not a JSON object (got {type(obj).__name__})", orjson.dumps(obj).decode())
        else:
            if classify:
                self.result.formats.add(record_format(obj))
            try:
                event = normalize(obj, source=self.source, keep_raw=self.keep_raw)
            except NormalizeError as exc:
                self.fail(where, str(exc), orjson.dumps(redact(obj), default=str).decode())
            except Exception as exc:
                self.fail(
                    where, f"{type(exc).__name__}: {exc}", orjson.dumps(redact(obj), default=str).decode()
                )
            else:
                self.batch.append(event)
                self.batch_where.append(where)
        if len(self.batch) >= IMPORT_BATCH:
            await self.flush()

    async def line(self, lineno: int, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.result.records += 1
            self.fail(f"line {lineno}", f"not valid JSON: {exc}", text.decode("utf-8", "replace"))
            if len(self.dead) >= 500:
                await self.flush()
            return
        await self.record(f"line {lineno}", obj)

    async def flush(self) -> None:
        if self.batch:
            events, wheres = self.batch, self.batch_where
            self.batch, self.batch_where = [], []
            self.inflight.append(asyncio.create_task(self._write(events, wheres)))
            while len(self.inflight) >= MAX_INFLIGHT_WRITES:
                await self.inflight.pop(0)
        if self.dead:
            items, self.dead = self.dead, []
            await store_events.add_dead_letters(self.db, DEFAULT_SOURCE, items)
            self.result.dead_lettered += len(items)
        if self.progress is not None:
            self.progress(self.result, self.bytes_read)

    async def _write(self, events: list[UsageEvent], wheres: list[str]) -> None:
        try:
            flags = await self.writer.write(events)
        except Exception as exc:
            # The writer dead-lettered what it could not store; report the batch as failed.
            self.result.failed += len(events)
            if len(self.result.failures) < MAX_FAILURE_SAMPLES:
                self.result.failures.append(
                    {"line": f"{wheres[0]} - {wheres[-1]}", "reason": f"could not be stored: {exc}"}
                )
            return
        added = sum(flags)
        self.result.added += added
        self.result.skipped += len(flags) - added

    async def finish(self) -> None:
        await self.flush()
        for task in self.inflight:
            await task
        self.inflight.clear()
        if self.progress is not None:
            self.progress(self.result, self.bytes_read)


async def import_chunks(
    db: Database,
    writer: UsageWriter,
    chunks: AsyncIterable[bytes],
    *,
    name: str = "upload",
    source: str = DEFAULT_SOURCE,
    keep_raw: bool = True,
    progress: ProgressFn | None = None,
) -> ImportResult:
    """Import one file given as a stream of byte chunks (a file, ``request.stream()``, ...);
    never raises for bad content.

    A file-level refusal (e.g. an aggregate-only legacy export) is reported in ``error``;
    bad records are counted in ``failed``, the first ones listed with their line, and kept
    in dead letters.
    """
    source = source.strip() or DEFAULT_SOURCE
    result = ImportResult(name=name)
    imp = _Importer(db, writer, result, source=source, keep_raw=keep_raw, progress=progress)
    lines = _lines(chunks, imp.on_bytes)
    mode: str | None = None
    held: list[tuple[int, bytes]] = []  # first line(s) while the format is being decided
    document: list[tuple[int, bytes]] = []
    document_size = 0
    try:
        async for lineno, line in lines:
            if mode == "jsonl":
                await imp.line(lineno, line)
                continue
            if mode == "document":
                document.append((lineno, line))
                document_size += len(line)
                if document_size > DOCUMENT_LIMIT:
                    # Too big to be a CPA usage export (CPA held it in memory): it is JSONL
                    # whose first lines are broken. Stream the rest; memory stays bounded.
                    mode = "jsonl"
                    for n, held_line in document:
                        await imp.line(n, held_line)
                    document = []
                continue
            if not held and not line.strip(b" \t\r\n\xef\xbb\xbf"):
                continue
            held.append((lineno, line.lstrip(b"\xef\xbb\xbf")))
            mode = _decide(held)
            if mode is None:
                continue
            if mode == "jsonl":
                for n, held_line in held:
                    await imp.line(n, held_line)
            else:
                document.extend(held)
                document_size = sum(len(h) for _, h in held)
            held = []
        if mode is None and held:
            mode = "document"
            document.extend(held)
        if mode == "document":
            await _import_document(imp, document)
    except ImportRefused as exc:
        result.error = str(exc)
    finally:
        await imp.finish()
    if result.error is None and result.records and result.failed == result.records:
        result.error = (
            "nothing in this file could be imported (see the failures): relaymeter imports JSONL "
            "(relaymeter or CPA-Manager exports, CPA queue records), a JSON array of records or a "
            "CPA usage export with request details"
        )
    return result


def _decide(held: list[tuple[int, bytes]]) -> str | None:
    """jsonl, document, or None (need another line) from the first non-empty line(s)."""
    first = held[0][1].strip()
    if first.startswith(b"["):
        return "document"
    try:
        obj = orjson.loads(first)
    except orjson.JSONDecodeError:
        if len(held) < 2:
            return None
        # A second line that is a complete JSON object means JSONL with a broken first line;
        # otherwise the file is one (pretty-printed) JSON document.
        try:
            second = orjson.loads(held[1][1].strip())
        except orjson.JSONDecodeError:
            return "document"
        return "jsonl" if isinstance(second, dict) else "document"
    if is_legacy_document(obj):
        return "document"
    return "jsonl"


async def _import_document(imp: _Importer, lines: list[tuple[int, bytes]]) -> None:
    try:
        doc = orjson.loads(b"\n".join(line for _, line in lines))
    except orjson.JSONDecodeError:
        # Not one JSON document after all: JSONL with broken first lines.
        for n, line in lines:
            await imp.line(n, line)
        return
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            await imp.record(f"item {i}", item)
        return
    if is_legacy_document(doc):
        imp.result.formats.add("cpa-legacy")
        for where, record in legacy_records(doc):
            await imp.record(where, record, classify=False)
        return
    if isinstance(doc, dict):
        await imp.record("line 1", doc)
        return
    raise ImportRefused(f"a JSON {type(doc).__name__} is not a usage record or usage export")


async def import_file(
    db: Database,
    writer: UsageWriter,
    path: Path,
    *,
    source: str = DEFAULT_SOURCE,
    keep_raw: bool = True,
    progress: ProgressFn | None = None,
) -> ImportResult:
    if not await asyncio.to_thread(path.is_file):
        return ImportResult(name=str(path), error=f"no such file: {path}")
    try:
        return await import_chunks(
            db, writer, file_chunks(path), name=str(path), source=source, keep_raw=keep_raw, progress=progress
        )
    except OSError as exc:
        return ImportResult(name=str(path), error=f"cannot read {path}: {exc.strerror or exc}")


# --- export -------------------------------------------------------------------------------------


def event_from_row(row: dict[str, Any]) -> UsageEvent:
    values = {name: row[name] for name in EVENT_FIELDS if name in row}
    for name in ("failed", "price_missing"):
        if name in values:
            values[name] = bool(values[name])
    if values.get("stream") is not None:
        values["stream"] = bool(values["stream"])
    return UsageEvent(**values)


async def export_jsonl(
    db: Database,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    filters: Filters = Filters(),
    include_raw: bool = True,
) -> AsyncIterator[bytes]:
    """relaymeter JSONL (one export record per line), oldest first, a page per chunk.

    ``include_raw=False`` leaves out the stored (redacted) raw payloads: a much smaller file
    that still re-imports to the same summaries.
    """
    async for rows in store_export.iter_event_pages(db, start_ms=start_ms, end_ms=end_ms, filters=filters):
        if not include_raw:
            for row in rows:
                row["raw_json"] = None
        yield b"".join(orjson.dumps(to_export_record(event_from_row(r))) + b"\n" for r in rows)
