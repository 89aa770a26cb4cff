"""Test harness: relaymeter served by uvicorn on loopback with fake Anthropic / OpenAI upstreams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select

from relaymeter.config import Settings
from relaymeter.http_protocol import http_protocol
from relaymeter.state import AppState
from relaymeter.store.schema import usage_events
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.upstream_base import serve_asgi

ADMIN_TOKEN = "test-admin-token-0123456789"


@dataclass
class GatewayEnv:
    url: str
    app: Any
    admin: httpx.AsyncClient
    anthropic: FakeAnthropic
    anthropic_url: str
    openai: FakeOpenAI
    openai_url: str
    closing: list[Any] = field(default_factory=list)  # SDK clients closed when the env ends

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.rm
        return state

    @property
    def gateway(self) -> Any:
        return self.state.services["gateway"]

    async def add_account(self, **fields: Any) -> dict[str, Any]:
        provider = fields.setdefault("provider", "anthropic")
        fields.setdefault("name", f"{provider}-{len(self.gateway.pool.accounts) + 1}")
        if "base_url" not in fields:
            fields["base_url"] = self.anthropic_url if provider == "anthropic" else self.openai_url + "/v1"
        if fields.get("kind", "api_key") == "api_key":
            fields.setdefault("api_key", f"sk-upstream-{fields['name']}")
        res = await self.admin.post("/api/accounts", json=fields)
        assert res.status_code == 201, res.text
        account: dict[str, Any] = res.json()
        return account

    async def create_key(self, **fields: Any) -> tuple[int, str]:
        fields.setdefault("name", f"key-{len(self.gateway.keys_by_id) + 1}")
        res = await self.admin.post("/api/keys", json=fields)
        assert res.status_code == 201, res.text
        body = res.json()
        return int(body["api_key"]["id"]), str(body["key"])

    async def events(self) -> list[dict[str, Any]]:
        await self.state.writer.flush()
        async with self.state.db.connect() as conn:
            rows = await conn.execute(select(usage_events).order_by(usage_events.c.id))
            return [dict(r._mapping) for r in rows]


@contextlib.asynccontextmanager
async def gateway_env(settings: Settings) -> AsyncIterator[GatewayEnv]:
    from relaymeter.app import create_app

    anthropic = FakeAnthropic()
    openai = FakeOpenAI()
    app = create_app(settings)
    async with (
        serve_asgi(anthropic) as anthropic_url,
        serve_asgi(openai) as openai_url,
        serve_asgi(app, lifespan="on", http=http_protocol()) as url,
        httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        ) as admin,
    ):
        env = GatewayEnv(url, app, admin, anthropic, anthropic_url, openai, openai_url)
        try:
            yield env
        finally:
            for client in env.closing:
                with contextlib.suppress(Exception):
                    await client.close()
