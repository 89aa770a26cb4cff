"""`relaymeter keys ...`: create (shown once), list, edit, enable/disable and revoke client API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from relaymeter.cli import common
from relaymeter.cli.accounts_cmd import _validation

app = typer.Typer(help="Client API keys for the gateway.", no_args_is_help=True)

ModelOpt = Annotated[list[str] | None, typer.Option("--model", "-m", help="allowed model (glob ok); repeat")]


def _limit_fields(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


async def _resolve(state: Any, ref: str) -> int:
    from relaymeter.store import keys as key_store

    row = await key_store.find_key(state.db, ref)
    if row is None:
        common.fail(f"no API key {ref!r} (give its id, name or prefix; see `relaymeter keys list`)")
    return int(row["id"])


def _expiry(expires_at: str | None, expires_in_days: float | None) -> Any:
    if expires_in_days is not None:
        import time

        return int(time.time() * 1000 + expires_in_days * 86_400_000)
    return expires_at


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="who or what uses this key")],
    remark: Annotated[str | None, typer.Option()] = None,
    expires_at: Annotated[str | None, typer.Option(help="ISO 8601 or epoch")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="expire after this many days")] = None,
    model: ModelOpt = None,
    max_concurrency: Annotated[
        int | None, typer.Option(help="requests in flight at once (0 = unlimited)")
    ] = None,
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    daily_usd: Annotated[float | None, typer.Option(help="daily budget in USD")] = None,
    weekly_usd: Annotated[float | None, typer.Option(help="weekly budget in USD")] = None,
    monthly_usd: Annotated[float | None, typer.Option(help="monthly budget in USD")] = None,
    total_usd: Annotated[float | None, typer.Option(help="all-time budget in USD")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from relaymeter.gateway import admin

    fields = _limit_fields(
        name=name,
        remark=remark,
        expires_at=_expiry(expires_at, expires_in_days),
        models=model,
        max_concurrency=max_concurrency,
        rpm=rpm,
        tpm=tpm,
        daily_limit_usd=daily_usd,
        weekly_limit_usd=weekly_usd,
        monthly_limit_usd=monthly_usd,
        total_limit_usd=total_usd,
    )
    try:
        inp = admin.KeyCreate.model_validate(fields)
    except ValidationError as exc:
        common.fail(_validation(exc))

    async def run() -> tuple[dict[str, Any], str]:
        async with common.open_app_state(start_writer=False) as state:
            return await admin.create_key(state, inp)

    view, secret = common.run(run())
    if json_out:
        common.print_json({"key": secret, "api_key": view})
        return
    common.console.print(f"created key {view['id']} [bold]{view['name']}[/]")
    common.console.print("store it now, it will not be shown again:")
    print(secret)


def _usd(micros: int | None) -> str:
    return "-" if micros is None else f"${micros / 1_000_000:,.2f}"


@app.command("list")
def list_cmd(
    origin: Annotated[str, typer.Option(help="gateway | observed | all")] = "all",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Keys with their limits and spend today / this week / this month (observed keys cannot be used)."""
    from relaymeter.domain.limits import calendar_windows
    from relaymeter.domain.windows import now_ms, zone
    from relaymeter.gateway import admin
    from relaymeter.store import keys as key_store

    if origin not in ("gateway", "observed", "all"):
        common.fail("--origin: gateway, observed or all")
    cfg = common.settings()

    async def run() -> list[dict[str, Any]]:
        async with common.open_app_state(cfg, start_writer=False) as state:
            rows = await key_store.list_keys(state.db, origin=None if origin == "all" else origin)
            now = now_ms()
            windows = calendar_windows(now, zone(cfg.timezone), cfg.week_start)
            spans = {p: (w.start_ms, now + 1) for p, w in windows.items()}
            spend = await key_store.spend(state.db, [r["id"] for r in rows], spans)
            return [admin.key_view(r, {"spend_micros": spend.get(r["id"], {})}) for r in rows]

    views = common.run(run())
    if json_out:
        common.print_json(views)
        return
    table = Table(title="API keys", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("name", no_wrap=True)
    table.add_column("prefix", no_wrap=True)
    table.add_column("state")
    table.add_column("limits")
    table.add_column("spent d/w/m")
    table.add_column("budget d/w/m/total")
    for v in views:
        if v["origin"] != "gateway":
            state_text = "observed"
        elif v["revoked"]:
            state_text = "[red]revoked[/]"
        elif not v["enabled"]:
            state_text = "[yellow]disabled[/]"
        elif not v["usable"]:
            state_text = "[yellow]expired[/]"
        else:
            state_text = "[green]active[/]"
        spend = v["usage"]["spend_micros"]
        limits = [
            f"{label} {v[col]}"
            for label, col in (("conc", "max_concurrency"), ("rpm", "rpm"), ("tpm", "tpm"))
            if v[col]
        ]
        if v["models"]:
            limits.append("models " + ",".join(v["models"]))
        table.add_row(
            str(v["id"]),
            v["name"],
            v["prefix"],
            state_text,
            "\n".join(limits) or "-",
            " / ".join(_usd(spend.get(p)) for p in ("day", "week", "month")),
            " / ".join(
                _usd(v[c])
                for c in (
                    "daily_limit_micros",
                    "weekly_limit_micros",
                    "monthly_limit_micros",
                    "total_limit_micros",
                )
            ),
        )
    common.console.print(table)


@app.command("edit")
def edit(
    ref: Annotated[str, typer.Argument(help="key id, name or prefix")],
    name: Annotated[str | None, typer.Option()] = None,
    remark: Annotated[str | None, typer.Option()] = None,
    expires_at: Annotated[str | None, typer.Option(help="ISO 8601 or epoch")] = None,
    expires_in_days: Annotated[float | None, typer.Option()] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="never expire")] = False,
    model: ModelOpt = None,
    any_model: Annotated[bool, typer.Option("--any-model", help="remove the model allow-list")] = False,
    max_concurrency: Annotated[int | None, typer.Option()] = None,
    rpm: Annotated[int | None, typer.Option()] = None,
    tpm: Annotated[int | None, typer.Option()] = None,
    daily_usd: Annotated[float | None, typer.Option()] = None,
    weekly_usd: Annotated[float | None, typer.Option()] = None,
    monthly_usd: Annotated[float | None, typer.Option()] = None,
    total_usd: Annotated[float | None, typer.Option()] = None,
    no_budgets: Annotated[bool, typer.Option("--no-budgets", help="remove every USD limit")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Change a key's name, expiry, models or limits; only the options given are changed."""
    from relaymeter.gateway import admin

    fields = _limit_fields(
        name=name,
        remark=remark,
        expires_at=_expiry(expires_at, expires_in_days),
        models=model,
        max_concurrency=max_concurrency,
        rpm=rpm,
        tpm=tpm,
        daily_limit_usd=daily_usd,
        weekly_limit_usd=weekly_usd,
        monthly_limit_usd=monthly_usd,
        total_limit_usd=total_usd,
    )
    if no_expiry:
        fields["expires_at"] = None
    if any_model:
        fields["models"] = None
    if no_budgets:
        fields.update(
            daily_limit_usd=None, weekly_limit_usd=None, monthly_limit_usd=None, total_limit_usd=None
        )
    if not fields:
        common.fail("nothing to change: give at least one option (see --help)")
    try:
        inp = admin.KeyUpdate.model_validate(fields)
    except ValidationError as exc:
        common.fail(_validation(exc))

    async def run() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            try:
                return await admin.update_key(state, await _resolve(state, ref), inp)
            except admin.AdminError as exc:
                common.fail(str(exc))

    view = common.run(run())
    if json_out:
        common.print_json(view)
    else:
        common.console.print(f"updated key {view['id']} [bold]{view['name']}[/]")


def _act(ref: str, action: str) -> None:
    from relaymeter.gateway import admin

    async def run() -> dict[str, Any]:
        async with common.open_app_state(start_writer=False) as state:
            key_id = await _resolve(state, ref)
            try:
                if action == "revoke":
                    return await admin.revoke_key(state, key_id)
                return await admin.set_key_enabled(state, key_id, action == "enable")
            except admin.AdminError as exc:
                common.fail(str(exc))

    view = common.run(run())
    common.console.print(f"key {view['id']} {view['name']}: {action}d")


@app.command("enable")
def enable(ref: Annotated[str, typer.Argument(help="key id, name or prefix")]) -> None:
    """Enable a key."""
    _act(ref, "enable")


@app.command("disable")
def disable(ref: Annotated[str, typer.Argument(help="key id, name or prefix")]) -> None:
    """Disable a key (it can be enabled again)."""
    _act(ref, "disable")


@app.command("revoke")
def revoke(
    ref: Annotated[str, typer.Argument(help="key id, name or prefix")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Revoke a key for good (it can never be used again)."""
    if not yes and not typer.confirm(f"revoke key {ref} for good?"):
        raise typer.Exit(1)
    _act(ref, "revoke")
