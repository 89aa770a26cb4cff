"""`relaymeter import FILE...` and `relaymeter export`: usage files in and out (streaming)."""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from relaymeter.cli import common

SHOW_FAILURES = 10


def import_cmd(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE...", help="JSONL / JSON / CPA export files (.gz ok)")
    ],
    source: Annotated[
        str,
        typer.Option(help="event source for records without their own, e.g. import or cpa:main"),
    ] = "import",
    json_out: Annotated[bool, typer.Option("--json", help="machine-readable summary")] = False,
) -> None:
    """Import usage: relaymeter or CPA-Manager JSONL, raw CPA records, legacy CPA usage exports.

    Files are streamed (any size), and importing a file twice adds nothing.
    """
    from relaymeter.ingest import files as usage_files

    cfg = common.settings()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        common.fail(f"no such file: {', '.join(missing)}")

    async def go() -> list[dict[str, Any]]:
        results = []
        async with common.open_app_state(cfg) as state:
            progress = Progress(
                TextColumn("[bold]{task.fields[name]}"),
                BarColumn(),
                DownloadColumn(),
                TextColumn("{task.fields[counts]}"),
                TimeRemainingColumn(),
                console=common.err_console,
                transient=False,
                disable=json_out or not common.err_console.is_terminal,
            )
            with progress:
                for path in files:
                    task = progress.add_task("import", total=path.stat().st_size, name=path.name, counts="")

                    def report(res: usage_files.ImportResult, done: int, task: Any = task) -> None:
                        progress.update(
                            task,
                            completed=done,
                            counts=f"added {res.added:,}  skipped {res.skipped:,}  failed {res.failed:,}",
                        )

                    result = await usage_files.import_file(
                        state.db,
                        state.writer,
                        path,
                        source=source,
                        keep_raw=cfg.store_raw_payloads,
                        progress=report,
                    )
                    report(result, path.stat().st_size)
                    results.append(result.to_dict())
        return results

    results = common.run(go())
    if json_out:
        common.print_json(results)
    else:
        _print_import_summary(results)
    if any(r["error"] or r["failed"] for r in results):
        raise typer.Exit(1)


def _print_import_summary(results: list[dict[str, Any]]) -> None:
    table = Table(title="import", title_justify="left")
    for col in ("file", "format", "records", "added", "skipped", "failed"):
        table.add_column(col, justify="left" if col in ("file", "format") else "right")
    totals = {"records": 0, "added": 0, "skipped": 0, "failed": 0}
    for r in results:
        for k in totals:
            totals[k] += r[k]
        table.add_row(
            r["file"],
            r["format"],
            f"{r['records']:,}",
            f"[green]{r['added']:,}[/]",
            f"{r['skipped']:,}",
            f"[red]{r['failed']:,}[/]" if r["failed"] else "0",
        )
    if len(results) > 1:
        table.add_row("total", "", *(f"{totals[k]:,}" for k in ("records", "added", "skipped", "failed")))
    common.console.print(table)
    for r in results:
        if r["error"]:
            common.err_console.print(f"[bold red]{r['file']}:[/] {r['error']}", highlight=False)
    shown = 0
    for r in results:
        for failure in r["failures"]:
            if shown == 0:
                common.err_console.print("[bold]first failures:[/]")
            if shown >= SHOW_FAILURES:
                break
            common.err_console.print(f"  {r['file']} {failure['line']}: {failure['reason']}", highlight=False)
            shown += 1
    if totals["failed"]:
        common.err_console.print(
            f"{totals['failed']:,} records failed; they are kept in dead letters (source 'import')",
            highlight=False,
        )
    common.console.print(
        f"added {totals['added']:,}, skipped {totals['skipped']:,} already stored, failed {totals['failed']:,}",
        highlight=False,
    )


def export_cmd(
    range_name: Annotated[
        str, typer.Argument(metavar="[RANGE]", help="all (default), today, 1h, 5h, 24h, 7d, 30d or custom")
    ] = "all",
    start: Annotated[
        str | None, typer.Option(help="range start (ISO 8601 or epoch ms); implies custom")
    ] = None,
    end: Annotated[str | None, typer.Option(help="range end (default now)")] = None,
    tz: Annotated[str | None, typer.Option(help="IANA time zone for dates (default: configured)")] = None,
    account: Annotated[list[int] | None, typer.Option(help="account id (repeatable)")] = None,
    api_key: Annotated[list[int] | None, typer.Option("--api-key", help="API key id (repeatable)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="served model (repeatable)")] = None,
    provider: Annotated[list[str] | None, typer.Option(help="provider (repeatable)")] = None,
    endpoint: Annotated[
        list[str] | None, typer.Option(help="endpoint, e.g. 'POST /v1/messages' (repeatable)")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="gateway, cpa:<name> or import (repeatable)")
    ] = None,
    status: Annotated[str | None, typer.Option(help="success or failed")] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write to this file (.gz compresses); default stdout"),
    ] = None,
    raw: Annotated[bool, typer.Option("--raw/--no-raw", help="include stored raw payloads")] = True,
) -> None:
    """Export usage events as relaymeter JSONL (re-importable without duplicates)."""
    from relaymeter.domain.windows import RangeError, now_ms, parse_time_ms, resolve_range, zone
    from relaymeter.ingest import files as usage_files
    from relaymeter.store import export as store_export
    from relaymeter.store.queries import Filters

    cfg = common.settings()
    if status not in (None, "success", "failed"):
        common.fail("--status must be success or failed")
    start_ms: int | None = None
    end_ms: int | None = None
    try:
        tz_name = tz or cfg.timezone
        if range_name == "all" and not start:
            if end:
                end_ms = parse_time_ms(end, zone(tz_name))
        else:
            rng = resolve_range(
                "custom" if range_name == "all" else range_name, tz=tz_name, start=start, end=end
            )
            start_ms, end_ms = rng.start_ms, rng.end_ms
    except RangeError as exc:
        common.fail(str(exc))
    if end_ms is None and start_ms is not None:
        end_ms = now_ms() + 1
    filters = Filters(
        account_ids=tuple(account or ()),
        api_key_ids=tuple(api_key or ()),
        models=tuple(model or ()),
        providers=tuple(provider or ()),
        endpoints=tuple(endpoint or ()),
        sources=tuple(source or ()),
        status=status,
    )

    async def go() -> int:
        async with common.open_app_state(cfg, start_writer=False) as state:
            total = await store_export.count_events(
                state.db, start_ms=start_ms, end_ms=end_ms, filters=filters
            )
            if output is None:
                out: IO[bytes] = sys.stdout.buffer
                return await _write(state.db, out, total, show=False)
            output.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".relaymeter-export-", dir=output.parent)
            try:
                with os.fdopen(fd, "wb") as raw:
                    if output.suffix == ".gz":
                        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
                            written = await _write(state.db, gz, total, show=True)  # type: ignore[arg-type]
                    else:
                        written = await _write(state.db, raw, total, show=True)
                    raw.flush()
                    os.fsync(raw.fileno())
                os.replace(tmp_name, output)
            except BaseException:
                os.unlink(tmp_name)
                raise
            return written

    async def _write(db: Any, out: IO[bytes], total: int, *, show: bool) -> int:
        progress = Progress(
            TextColumn("[bold]export"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=common.err_console,
            disable=not show or not common.err_console.is_terminal,
        )
        written = 0
        with progress:
            task = progress.add_task("export", total=total)
            async for chunk in usage_files.export_jsonl(
                db, start_ms=start_ms, end_ms=end_ms, filters=filters, include_raw=raw
            ):
                out.write(chunk)
                n = chunk.count(b"\n")
                written += n
                progress.advance(task, n)
        out.flush()
        return written

    try:
        written = common.run(go())
    except BrokenPipeError:  # `relaymeter export | head`
        raise typer.Exit(0) from None
    if output is not None:
        common.err_console.print(f"exported {written:,} events to {output}", highlight=False)
