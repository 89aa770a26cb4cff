"""Checking a CPA connection before it is saved or when asked (`relaymeter cpa test`, the API).

Nothing is popped: the HTTP queue is probed with count=0 (CPA answers 400 when the endpoint
exists) and RESP only authenticates. The first refused key stops the check, because every
failed attempt counts toward CPA's 5-strike ban.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from relaymeter.ingest.cliproxy.management import (
    CPAAuthError,
    CPAError,
    CPANotFoundError,
    ManagementClient,
)
from relaymeter.ingest.cliproxy.resp import RespQueue
from relaymeter.ingest.cliproxy.runner import ConfigRefused, check_poll_interval


@dataclass
class CheckResult:
    ok: bool = False
    base_url: str = ""
    cpa_version: str | None = None
    publishing_enabled: bool | None = None
    publishing_changed: bool = False
    retention_s: int | None = None
    poll_interval_ok: bool | None = None
    http_queue: bool | None = None
    resp_ok: bool | None = None
    transport: str | None = None  # what the collector will use
    auth_files: int | None = None
    error: str | None = None
    error_kind: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def check_cpa(
    base_url: str,
    management_key: str,
    *,
    mode: str = "auto",
    poll_interval_ms: int | None = None,
    enable_publishing: bool = False,
    verify_tls: bool = True,
) -> CheckResult:
    """Validate URL, key, retention vs poll interval and the queue transport; optionally turn
    CPA's usage publishing on. Never raises for CPA-side problems (see ``error``)."""
    result = CheckResult(base_url=base_url)
    try:
        mgmt = ManagementClient(base_url, management_key, verify=verify_tls)
    except ValueError as exc:
        result.error, result.error_kind = str(exc), "config_error"
        return result
    result.base_url = mgmt.base_url
    async with mgmt:
        try:
            try:
                config = await mgmt.get_config()
            except CPANotFoundError:
                raise ConfigRefused(
                    f"{mgmt.base_url} has no CPA management API (404 on /v0/management/config): is this "
                    "CPA's API port, and is remote-management.secret-key set in its config?"
                ) from None
            result.cpa_version = mgmt.version.version or None
            result.retention_s = await mgmt.retention_seconds(config)
            if poll_interval_ms is not None:
                check_poll_interval(poll_interval_ms, result.retention_s)
                result.poll_interval_ok = True
            enabled = config.get("usage-statistics-enabled")
            if not isinstance(enabled, bool):
                enabled = await mgmt.usage_statistics_enabled()
            if not enabled and enable_publishing:
                await mgmt.set_usage_statistics_enabled(True)
                enabled = await mgmt.usage_statistics_enabled()
                result.publishing_changed = enabled
            result.publishing_enabled = enabled
            if not enabled:
                result.warnings.append(
                    "CPA usage publishing is off (usage-statistics-enabled: false): CPA queues no usage "
                    "records until it is turned on"
                )
            try:
                result.auth_files = len(await mgmt.auth_files())
            except CPAAuthError:
                raise
            except CPAError as exc:
                result.warnings.append(f"auth files unavailable (accounts stay unnamed): {exc}")
            if mode in ("auto", "http"):
                result.http_queue = await mgmt.probe_usage_queue()
            if mode == "http" and not result.http_queue:
                raise ConfigRefused(
                    "this CPA has no HTTP usage queue (older than 6.10.8): use mode 'auto' or 'resp'"
                )
            if mode == "resp" or (mode == "auto" and not result.http_queue):
                resp = RespQueue.for_cpa(mgmt.base_url, management_key, verify_tls=verify_tls)
                try:
                    await resp.probe()
                    result.resp_ok = True
                finally:
                    await resp.close()
            result.transport = "http" if mode != "resp" and result.http_queue else "resp"
            result.ok = True
        except ConfigRefused as exc:
            result.error, result.error_kind = str(exc), "config_error"
            if "poll interval" in str(exc):
                result.poll_interval_ok = False
        except CPAError as exc:
            result.error, result.error_kind = str(exc), exc.kind
    return result
