"""Background services started in the app lifespan (writer first, stopped last).

Each feature registers a factory here: ``factory(state) -> Service | None`` (None when the
feature is off). Services start in list order and stop in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from relaymeter.state import AppState

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ServiceFactory = Callable[[AppState], "Service | None"]


def service_factories() -> list[ServiceFactory]:
    """Factories of the services ``relaymeter serve`` runs; features add theirs here."""
    factories: list[ServiceFactory] = []
    # Runtime settings first: every later service sees the admin's stored options.
    from relaymeter.runtime_settings import runtime_settings_service

    factories.append(runtime_settings_service)
    from relaymeter.api.metrics import metrics_service

    factories.append(metrics_service)
    from relaymeter.pricing.service import pricing_service

    factories.append(pricing_service)
    from relaymeter.gateway.service import factory as gateway_service

    factories.append(gateway_service)
    from relaymeter.quota.service import quota_service

    factories.append(quota_service)
    from relaymeter.retention import retention_service

    factories.append(retention_service)
    from relaymeter.api.cpa_panel import cpa_panel_service

    factories.append(cpa_panel_service)
    from relaymeter.ingest.cliproxy.service import collector_factory

    factories.append(collector_factory)
    return factories


async def start_services(state: AppState) -> list[Service]:
    started: list[Service] = []
    for factory in service_factories():
        service = factory(state)
        if service is None:
            continue
        await service.start()
        state.services[service.name] = service
        started.append(service)
        log.info("started %s", service.name)
    return started


async def stop_services(state: AppState, services: list[Service]) -> None:
    for service in reversed(services):
        try:
            await service.stop()
        except Exception:
            log.exception("stopping %s failed", service.name)
        state.services.pop(service.name, None)
