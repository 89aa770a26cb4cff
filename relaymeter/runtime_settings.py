"""Runtime options an admin changes without editing the config file (retention, time zone, ...).

Values live in the settings table under ``runtime.<name>`` and are applied onto the shared
Settings object at start and on every change, so code reading ``state.settings`` sees them.
A value pinned by an environment variable stays read-only (the environment wins).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relaymeter.config import Settings
from relaymeter.domain.windows import WEEKDAYS, RangeError, zone
from relaymeter.state import AppState
from relaymeter.store import settings as settings_store

log = logging.getLogger(__name__)
PREFIX = "runtime."


class RuntimeSettingError(ValueError):
    """An invalid value or an option that cannot be changed; str() says what to fix."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}")
        return value

    return check


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be an IANA time zone name such as Europe/Berlin, or 'local'")
    try:
        zone(value.strip())
    except RangeError as exc:
        raise ValueError(str(exc)) from None
    return value.strip()


def _week_start(value: Any) -> str:
    choices = ("monday", "sunday", "saturday")
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    assert value.strip().lower() in WEEKDAYS
    return value.strip().lower()


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


@dataclass(frozen=True, slots=True)
class RuntimeOption:
    name: str
    kind: str  # integer | string | boolean
    description: str
    validate: Callable[[Any], Any]
    restart_note: str | None = None  # parts that only pick the change up after a restart
    choices: tuple[str, ...] | None = None


OPTIONS: dict[str, RuntimeOption] = {
    o.name: o
    for o in (
        RuntimeOption(
            "retention_days",
            "integer",
            "delete raw events older than this many days (rollups are kept); 0 keeps everything",
            _int_range(0, 36500),
        ),
        RuntimeOption(
            "timezone",
            "string",
            "IANA time zone of reports, calendar periods and limits ('local' = the server's zone)",
            _timezone,
            restart_note="gateway budget periods follow after a restart",
        ),
        RuntimeOption(
            "week_start",
            "string",
            "first day of a week for weekly limits and reports",
            _week_start,
            restart_note="gateway budget periods follow after a restart",
            choices=("monday", "sunday", "saturday"),
        ),
        RuntimeOption(
            "store_raw_payloads",
            "boolean",
            "keep the redacted raw record of each new event",
            _bool,
        ),
    )
}


def _base(settings: Settings) -> dict[str, Any]:
    """The values from env / config file / defaults, remembered before any override applies."""
    base: dict[str, Any] | None = settings.__dict__.get("_runtime_base")
    if base is None:
        base = {name: getattr(settings, name) for name in OPTIONS}
        settings.__dict__["_runtime_base"] = base
    return base


def origin_of(settings: Settings, name: str) -> str:
    origins: dict[str, str] = settings.__dict__.get("_origins", {})
    return origins.get(name, "default")


def pinned_by_env(settings: Settings, name: str) -> bool:
    return origin_of(settings, name).startswith("env ")


def validate(name: str, value: Any) -> Any:
    option = OPTIONS.get(name)
    if option is None:
        raise RuntimeSettingError(
            name, f"unknown runtime setting; use one of {', '.join(OPTIONS)}", status=404
        )
    try:
        return option.validate(value)
    except ValueError as exc:
        raise RuntimeSettingError(name, str(exc)) from None


def apply(settings: Settings, overrides: dict[str, Any]) -> None:
    """Put stored overrides onto settings (env-pinned options keep their env value)."""
    base = _base(settings)
    for name in OPTIONS:
        if name in overrides and not pinned_by_env(settings, name):
            try:
                value = validate(name, overrides[name])
            except RuntimeSettingError as exc:
                log.warning("ignoring stored runtime setting %s", exc)
                value = base[name]
        else:
            value = base[name]
        settings.__dict__[name] = value


async def load_overrides(state: AppState) -> dict[str, Any]:
    stored = await settings_store.get_settings(state.db, PREFIX)
    return {k[len(PREFIX) :]: v for k, v in stored.items() if k[len(PREFIX) :] in OPTIONS}


async def refresh(state: AppState) -> dict[str, Any]:
    overrides = await load_overrides(state)
    apply(state.settings, overrides)
    return overrides


async def set_values(state: AppState, values: dict[str, Any]) -> dict[str, Any]:
    """Validate every value first, then store and apply them; returns the cleaned values."""
    cleaned = {}
    for name, value in values.items():
        cleaned[name] = validate(name, value)
        if pinned_by_env(state.settings, name):
            raise RuntimeSettingError(
                name,
                f"set by {origin_of(state.settings, name)}; change it there (the environment wins)",
                status=409,
            )
    for name, value in cleaned.items():
        await settings_store.set_setting(state.db, PREFIX + name, value)
    await refresh(state)
    return cleaned


async def reset(state: AppState, name: str) -> None:
    if name not in OPTIONS:
        raise RuntimeSettingError(
            name, f"unknown runtime setting; use one of {', '.join(OPTIONS)}", status=404
        )
    await settings_store.delete_setting(state.db, PREFIX + name)
    await refresh(state)


def describe(settings: Settings, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    base = _base(settings)
    out = []
    for name, option in OPTIONS.items():
        pinned = pinned_by_env(settings, name)
        overridden = name in overrides and not pinned
        out.append(
            {
                "key": name,
                "value": getattr(settings, name),
                "config_value": base[name],
                "source": "runtime" if overridden else origin_of(settings, name),
                "editable": not pinned,
                "type": option.kind,
                "choices": list(option.choices) if option.choices else None,
                "description": option.description,
                "restart_note": option.restart_note,
            }
        )
    return out


class RuntimeSettingsService:
    """Applies stored runtime settings before the other services start."""

    name = "runtime-settings"

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def start(self) -> None:
        await refresh(self.state)

    async def stop(self) -> None:
        return None


def runtime_settings_service(state: AppState) -> RuntimeSettingsService:
    return RuntimeSettingsService(state)
