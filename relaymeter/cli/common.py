"""Shared CLI plumbing: settings from --config, running coroutines, opening the store, output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import orjson
import typer
from rich.console import Console

from relaymeter.config import ConfigError, Settings, load_settings
from relaymeter.state import AppState

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)

_config_path: str | None = None


def set_config_path(path: str | None) -> None:
    global _config_path
    _config_path = path


def settings(**overrides: Any) -> Settings:
    try:
        return load_settings(_config_path, **overrides)
    except ConfigError as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


@asynccontextmanager
async def open_app_state(
    cfg: Settings | None = None, *, start_writer: bool = True
) -> AsyncIterator[AppState]:
    """Open the store (migrated) and a running writer for a CLI command; flush on exit."""
    from relaymeter.app import open_state

    state = await open_state(cfg or settings())
    if start_writer:
        state.writer.start()
    try:
        yield state
    finally:
        await state.writer.close()
        await state.db.dispose()


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def async_command(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """Decorator: a Typer command body written as a coroutine."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run(fn(*args, **kwargs))

    return wrapper
