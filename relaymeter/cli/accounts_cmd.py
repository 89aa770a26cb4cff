"""`relaymeter accounts ...`: add, list, edit, enable/disable, remove, test and import gateway accounts.

Changes go to the store; a running server picks them up within its reload interval.
Secrets are prompted for (hidden) when not given, so they stay out of shell history.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from relaymeter.cli import common

app = typer.Typer(help="Upstream accounts the gateway relays to.", no_args_is_help=True)

ModelOpt = Annotated[list[str] | None, typer.Option("--model", "-m", help="allowed model (glob ok); repeat")]
MapOpt = Annotated[list[str] | None, typer.Option("--map", help="model mapping REQUESTED=ACTUAL; repeat")]


def _validation(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"


def _maps(items: list[str] | None) -> dict[str, str] | None:
    if items is None:
        return None
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            common.fail(f"--map {item!r}: use REQUESTED=ACTUAL")
        src, dst = item.split("=", 1)
        out[src.strip()] = dst.strip()
    return out


async def _resolve(state: Any, ref: str) -> int:
    from relaymeter.store import accounts as account_store

    if ref.isdigit():
        return int(ref)
    row = await account_store.find_by_name(state.db, ref)
    if row is None:
        common.fail(f"no gateway account named {ref!r} (see `relaymeter accounts list`)")
    return int(row["id"])


def _fields(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="a name you will recognise")],
    provider: Annotated[str, typer.Option(help="anthropic | openai | gemini | openai-compatible")],
    kind: Annotated[str, typer.Option(help="api_key | oauth")] = "api_key",
    api_key: Annotated[str | None, typer.Option(help="API key (prompted when omitted)")] = None,
    access_token: Annotated[str | None, typer.Option(help="OAuth access token")] = None,
    refresh_token: Annotated[str | None, typer.Option(help="OAuth refresh token")] = None,
    expires_at: Annotated[str | None, typer.Option(help="access token expiry (ISO 8601 or epoch)")] = None,
    account_id: Annotated[str | None, typer.Option(help="ChatGPT account id (Codex OAuth)")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="API base URL (required for openai-compatible)")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="higher is preferred (default 50)")] = None,
    weight: Annotated[int | None, typer.Option(help="share within a priority (default 1)")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="0 = unlimited")] = None,
    model: ModelOpt = None,
    map_: MapOpt = None,
    daily_requests: Annotated[int | None, typer.Option(help="daily request cap")] = None,
    daily_tokens: Annotated[int | None, typer.Option(help="daily token cap")] = None,
    daily_cost: Annotated[float | None, typer.Option(help="daily cost cap in USD")] = None,
    proxy: Annotated[str | None, typer.Option(help="HTTP proxy URL for this account")] = None,
    note: Annotated[str | None, typer.Option()] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="add it disabled")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Add an upstream account (credentials are encrypted at rest)."""
    from relaymeter.gateway import admin

    if kind == "api_key" and api_key is None:
        api_key = (
            typer.prompt("API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
        )
    fields = _fields(
        name=name,
        provider=admin.PROVIDER_ALIASES.get(provider.lower(), provider.lower()),
        kind=kind,
        api_key=api_key,
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=expires_at,
        account_id=account_id,
        base_url=base_url,
        priority=priority,
        weight=weight,
        max_concurrency=max_concurrency,
        models=model,
        model_map=_maps(map_),
        daily_request_cap=daily_requests,
        daily_token_cap=daily_tokens,
        daily_cost_cap_usd=daily_cost,
        proxy_url=proxy,
        note=note,
    )
    if disabled:
        fields["enabled"] = False
    try:
        inp = admin.AccountCreate.model_validate(fields)
    except ValidationError as exc:
        common.fail(_validation(exc))

    async def run() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            try:
                return await admin.create_account(state, inp)
            except admin.AdminError as exc:
                common.fail(str(exc))

    view = common.run(run())
    if json_out:
        common.print_json(view)
    else:
        common.console.print(
            f"added account {view['id']} [bold]{view['name']}[/] ({view['provider']}, {view['kind']})"
        )


def _cap(value: Any, usd: bool = False) -> str:
    if value is None:
        return "-"
    return f"${value / 1_000_000:,.2f}" if usd else f"{value:,}"


@app.command("list")
def list_cmd(
    all_: Annotated[bool, typer.Option("--all", help="include accounts observed via CPA / imports")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Accounts with priority, weight, limits and health."""
    from relaymeter.gateway import admin
    from relaymeter.store import accounts as account_store

    async def run() -> list[dict[str, Any]]:
        async with common.open_app_state(start_writer=False) as state:
            rows = await account_store.list_accounts(state.db, origin=None if all_ else "gateway")
            return [admin.account_view(r, state.box) for r in rows]

    views = common.run(run())
    if json_out:
        common.print_json(views)
        return
    table = Table(title="accounts", title_justify="left")
    for col in (
        "id",
        "name",
        "provider",
        "kind",
        "prio",
        "weight",
        "conc",
        "enabled",
        "health",
        "daily caps",
        "models",
    ):
        table.add_column(col)
    for v in views:
        caps = "/".join(
            (
                _cap(v["daily_request_cap"]),
                _cap(v["daily_token_cap"]),
                _cap(v["daily_cost_cap_micros"], usd=True),
            )
        )
        health = v["health"] or "-"
        if v.get("health_reason") and health != "ok":
            health += f": {v['health_reason'][:40]}"
        enabled = "yes" if v["enabled"] else f"no ({v['disabled_by'] or '-'})"
        table.add_row(
            str(v["id"]),
            v["name"],
            v["provider"],
            v["kind"],
            str(v["priority"]),
            str(v["weight"]),
            str(v["max_concurrency"] or "-"),
            enabled,
            health,
            caps if caps != "-/-/-" else "-",
            ", ".join(v["models"] or []) or "any",
        )
    common.console.print(table)


@app.command("edit")
def edit(
    ref: Annotated[str, typer.Argument(help="account id or name")],
    name: Annotated[str | None, typer.Option(help="new name")] = None,
    api_key: Annotated[str | None, typer.Option(help="replace the API key")] = None,
    access_token: Annotated[str | None, typer.Option()] = None,
    refresh_token: Annotated[str | None, typer.Option()] = None,
    expires_at: Annotated[str | None, typer.Option()] = None,
    base_url: Annotated[str | None, typer.Option()] = None,
    priority: Annotated[int | None, typer.Option()] = None,
    weight: Annotated[int | None, typer.Option()] = None,
    max_concurrency: Annotated[int | None, typer.Option()] = None,
    model: ModelOpt = None,
    any_model: Annotated[bool, typer.Option("--any-model", help="remove the model allow-list")] = False,
    map_: MapOpt = None,
    clear_map: Annotated[bool, typer.Option("--clear-map", help="remove the model mapping")] = False,
    daily_requests: Annotated[int | None, typer.Option()] = None,
    daily_tokens: Annotated[int | None, typer.Option()] = None,
    daily_cost: Annotated[float | None, typer.Option(help="USD")] = None,
    no_caps: Annotated[bool, typer.Option("--no-caps", help="remove all daily caps")] = False,
    proxy: Annotated[str | None, typer.Option()] = None,
    note: Annotated[str | None, typer.Option()] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Change an account; only the options given are changed."""
    from relaymeter.gateway import admin

    fields = _fields(
        name=name,
        api_key=api_key,
        access_token=access_token,
        refresh_token=refresh_token,
        expires_at=expires_at,
        base_url=base_url,
        priority=priority,
        weight=weight,
        max_concurrency=max_concurrency,
        models=model,
        model_map=_maps(map_),
        daily_request_cap=daily_requests,
        daily_token_cap=daily_tokens,
        daily_cost_cap_usd=daily_cost,
        proxy_url=proxy,
        note=note,
    )
    if any_model:
        fields["models"] = None
    if clear_map:
        fields["model_map"] = None
    if no_caps:
        fields.update(daily_request_cap=None, daily_token_cap=None, daily_cost_cap_usd=None)
    if not fields:
        common.fail("nothing to change: give at least one option (see --help)")
    try:
        inp = admin.AccountUpdate.model_validate(fields)
    except ValidationError as exc:
        common.fail(_validation(exc))

    async def run() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            try:
                return await admin.update_account(state, await _resolve(state, ref), inp)
            except admin.AdminError as exc:
                common.fail(str(exc))

    view = common.run(run())
    if json_out:
        common.print_json(view)
    else:
        common.console.print(f"updated account {view['id']} [bold]{view['name']}[/]")


def _set_enabled(ref: str, enabled: bool) -> None:
    from relaymeter.gateway import admin

    async def run() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            try:
                return await admin.set_account_enabled(state, await _resolve(state, ref), enabled)
            except admin.AdminError as exc:
                common.fail(str(exc))

    view = common.run(run())
    common.console.print(f"account {view['id']} {view['name']}: {'enabled' if enabled else 'disabled'}")


@app.command("enable")
def enable(ref: Annotated[str, typer.Argument(help="account id or name")]) -> None:
    """Enable an account."""
    _set_enabled(ref, True)


@app.command("disable")
def disable(ref: Annotated[str, typer.Argument(help="account id or name")]) -> None:
    """Disable an account by hand (automatic checks never re-enable it)."""
    _set_enabled(ref, False)


@app.command("remove")
def remove(
    ref: Annotated[str, typer.Argument(help="account id or name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a gateway account (its usage history stays)."""
    from relaymeter.gateway import admin

    if not yes and not typer.confirm(f"remove account {ref}?"):
        raise typer.Exit(1)

    async def run() -> None:
        async with common.open_app_state(start_writer=False) as state:
            try:
                await admin.delete_account(state, await _resolve(state, ref))
            except admin.AdminError as exc:
                common.fail(str(exc))

    common.run(run())
    common.console.print(f"removed account {ref}")


@app.command("test")
def test(
    ref: Annotated[str | None, typer.Argument(help="account id or name (default: every account)")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Probe accounts with a free request; a rejected credential marks the account unhealthy."""
    from relaymeter.gateway import admin
    from relaymeter.store import accounts as account_store

    async def run() -> list[dict[str, Any]]:
        async with common.open_app_state(start_writer=False) as state:
            if ref is not None:
                ids = [await _resolve(state, ref)]
            else:
                ids = [r["id"] for r in await account_store.list_accounts(state.db)]
            results = []
            for account_id in ids:
                try:
                    results.append(await admin.test_account(state, account_id))
                except admin.AdminError as exc:
                    common.fail(str(exc))
            return results

    results = common.run(run())
    if json_out:
        common.print_json(results)
    else:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[red]failed[/]"
            common.console.print(
                f"{r['id']:>4} {r['name']:<30} {mark}  {r.get('message', '')} ({r['latency_ms']} ms)"
            )
    if any(not r["ok"] for r in results):
        raise typer.Exit(1)


@app.command("import")
def import_cmd(
    files: Annotated[list[Path], typer.Argument(help="CSV, JSON or CPA auth files (- for stdin)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would be added; change nothing")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Import accounts: CSV with a header row, a JSON array, or CPA auth files (claude-*.json, codex-*.json)."""
    from relaymeter.gateway import admin

    texts: list[tuple[str, str]] = []
    for path in files:
        if str(path) == "-":
            texts.append(("stdin", sys.stdin.read()))
            continue
        try:
            texts.append((str(path), path.read_text(encoding="utf-8-sig")))
        except (OSError, UnicodeDecodeError) as exc:
            common.fail(f"{path}: {exc}")

    async def run() -> list[tuple[str, dict[str, Any]]]:
        out = []
        async with common.open_app_state(start_writer=False) as state:
            for label, text in texts:
                try:
                    out.append((label, await admin.import_accounts(state, text, dry_run=dry_run)))
                except admin.AdminError as exc:
                    common.fail(f"{label}: {exc}")
        return out

    results = common.run(run())
    if json_out:
        common.print_json([{"file": label, **r} for label, r in results])
        return
    failed = 0
    for label, result in results:
        table = Table(title=f"{label}{' (dry run)' if dry_run else ''}", title_justify="left")
        for col in ("row", "name", "result", "reason"):
            table.add_column(col)
        colours = {"added": "green", "skipped": "yellow", "failed": "red"}
        for row in result["rows"]:
            status = row["status"] if not dry_run or row["status"] != "added" else "would add"
            table.add_row(
                row["row"],
                row.get("name") or "-",
                f"[{colours[row['status']]}]{status}[/]",
                row.get("reason") or "",
            )
        common.console.print(table)
        common.console.print(
            f"added {result['added']}, skipped {result['skipped']}, failed {result['failed']}"
        )
        failed += result["failed"]
    if failed:
        raise typer.Exit(1)
