"""Settings: env RELAYMETER_* > TOML config file > defaults, with where each value came from."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "RELAYMETER_"
APP_NAME = "relaymeter"


class ConfigError(Exception):
    """Invalid configuration; str() is one line naming the key and the problem."""


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir, description="SQLite file, key file, spool")
    database_url: str | None = Field(None, description="sqlite+aiosqlite:///... or postgresql+asyncpg://...")
    host: str = Field("127.0.0.1", description="bind address of relaymeter serve")
    port: int = Field(8320, ge=1, le=65535, description="bind port of relaymeter serve")
    workers: int = Field(
        1,
        ge=1,
        le=32,
        description="processes of relaymeter serve sharing the port (gateway limits stay exact)",
    )
    timezone: str = Field("local", description="IANA time zone for reports and calendar limits")
    week_start: Literal["monday", "sunday", "saturday"] = Field("monday", description="first day of a week")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    admin_password: SecretStr | None = Field(None, description="admin password (else `relaymeter init`)")
    admin_token: SecretStr | None = Field(None, description="bearer token accepted on admin routes")
    secret_key: SecretStr | None = Field(None, description="Fernet key for credentials at rest")
    session_ttl_hours: int = Field(24 * 7, ge=1, le=24 * 365)

    redis_url: str | None = Field(None, description="shared counters for several gateway instances")

    writer_batch_size: int = Field(5000, ge=1, le=50_000, description="max events per write transaction")
    writer_linger_ms: int = Field(50, ge=0, le=10_000)
    writer_max_retries: int = Field(5, ge=0, le=100)
    store_raw_payloads: bool = Field(True, description="keep the redacted raw record of each event")
    retention_days: int = Field(0, ge=0, description="delete raw events older than this (0 = keep)")

    collector_enabled: bool = Field(True, description="run the CPA collector inside serve")
    collector_normalize_workers: int = Field(
        1, ge=0, le=16, description="worker processes normalizing popped records (0 = in-process)"
    )
    quota_refresh_interval_s: int = Field(300, ge=10)
    quota_force_cooldown_s: int = Field(300, ge=0)
    quota_max_parallel: int = Field(4, ge=1, le=64)
    pricing_sync_url: str = Field(
        "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json",
        description="LiteLLM price catalogue fetched by `relaymeter prices sync`",
    )

    upstream_timeout_s: float = Field(600.0, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    redis_prefix: str = Field(
        "relaymeter", min_length=1, description="key prefix of shared counters in Redis"
    )
    gateway_enabled: bool = Field(True, description="serve /v1/* relay routes")
    gateway_http_client: Literal["raw", "aiohttp", "httpx"] = Field(
        "raw", description="upstream HTTP client (raw: lean HTTP/1.1 client, proxied requests via aiohttp)"
    )
    gateway_max_attempts: int = Field(3, ge=1, le=10, description="accounts tried per request (failover)")
    gateway_sticky_ttl_s: int = Field(3600, ge=0, description="how long a session sticks to its account")
    gateway_reload_interval_s: float = Field(5.0, ge=0.5, description="poll for account/key changes")
    gateway_lease_ttl_s: int = Field(60, ge=5, description="expiry of a Redis concurrency slot (renewed)")

    metrics_token: SecretStr | None = Field(None, description="bearer token for /metrics (open when unset)")
    cors_origins: list[str] = Field(default_factory=list)
    cpa_panel_url: str | None = Field(None, description="CPA base URL that /v0/management/* proxies to")
    cpa_panel_key: SecretStr | None = Field(
        None,
        description="management key CPA's panel must send to /v0/management/* "
        "(default: the key of the CPA connection at cpa_panel_url)",
    )
    cpa_panel_cors_origins: list[str] = Field(
        default_factory=lambda: ["*"], description="origins allowed to call /v0/management/* from a browser"
    )
    cpa_panel_detail_limit: int = Field(
        50_000, ge=1, le=1_000_000, description="newest events in the CPA panel's usage payload"
    )

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        from relaymeter.domain.windows import RangeError, zone

        try:
            zone(value)
        except RangeError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(
            ("sqlite+aiosqlite://", "postgresql+asyncpg://", "postgresql://", "sqlite://")
        ):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        if value.startswith("postgresql://"):
            value = "postgresql+asyncpg://" + value[len("postgresql://") :]
        if value.startswith("sqlite://"):
            value = "sqlite+aiosqlite://" + value[len("sqlite://") :]
        return value

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'relaymeter.db'}"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)


SECRET_FIELDS = {name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}


def config_path_from_env(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    return Path(env).expanduser() if env else default_config_path()


def read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    # Allow both flat keys and a [relaymeter] table.
    if isinstance(data.get("relaymeter"), dict):
        data = {**{k: v for k, v in data.items() if k != "relaymeter"}, **data["relaymeter"]}
    return data


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from env > TOML file > defaults; raise ConfigError with one clear line."""
    path = config_path_from_env(config_file)
    file_values = read_toml(path)
    unknown = sorted(set(file_values) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}")
    env_keys = {name for name in Settings.model_fields if ENV_PREFIX + name.upper() in os.environ}
    init = {k: v for k, v in file_values.items() if k not in env_keys}
    init.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings(**init)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ())) or "?"
        origin = _origin(key, env_keys, file_values, path)
        raise ConfigError(f"invalid config {key} ({origin}): {err.get('msg', 'invalid value')}") from None
    settings.__dict__["_origins"] = {
        name: _origin(name, env_keys, file_values, path, overrides) for name in Settings.model_fields
    }
    settings.__dict__["_config_path"] = path
    return settings


def _origin(
    key: str,
    env_keys: set[str],
    file_values: dict[str, Any],
    path: Path,
    overrides: dict[str, Any] | None = None,
) -> str:
    if overrides and overrides.get(key) is not None:
        return "command line"
    if key in env_keys:
        return f"env {ENV_PREFIX}{key.upper()}"
    if key in file_values:
        return f"file {path}"
    return "default"


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, display value with secrets masked, origin) for every setting."""
    origins: dict[str, str] = settings.__dict__.get("_origins", {})
    rows = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            shown = "****" if value.get_secret_value() else ""
        elif value is None:
            shown = ""
        else:
            shown = str(value)
        if name == "database_url" and value:
            shown = _mask_url_password(str(value))
        if name == "redis_url" and value:
            shown = _mask_url_password(str(value))
        rows.append((name, shown, origins.get(name, "default")))
    rows.append(("effective_database_url", _mask_url_password(settings.effective_database_url), "derived"))
    return rows


def _mask_url_password(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:****@{host}"
    return url
