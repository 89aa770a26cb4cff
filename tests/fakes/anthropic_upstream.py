"""Fake Anthropic API on loopback: Messages (JSON and SSE), count_tokens, models, OAuth token refresh.

Speaks the real wire format (message_start / content_block_* / message_delta / message_stop,
usage with cache_read / cache_creation and the 5m / 1h split) so the official SDK and the
gateway's parsers see what they would see from the real API.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.fakes.upstream_base import FakeUpstream, Receive, Send, sse_event

_ids = itertools.count(1)


class FakeAnthropic(FakeUpstream):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.usage = {
            "input_tokens": 21,
            "output_tokens": 7,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 300,
            "cache_1h": 100,
        }
        self.text = "Hello from the fake Anthropic API."
        self.model_served: str | None = None  # answer with this model name (default: as requested)
        self.ratelimit_headers = True
        self.token_calls = 0
        self.token_status = 200
        self.token_expires_in = 3600

    def usage_block(self, output_tokens: int | None = None) -> dict[str, Any]:
        u = self.usage
        return {
            "input_tokens": u["input_tokens"],
            "cache_creation_input_tokens": u["cache_creation_input_tokens"],
            "cache_read_input_tokens": u["cache_read_input_tokens"],
            "cache_creation": {
                "ephemeral_5m_input_tokens": u["cache_creation_input_tokens"] - u["cache_1h"],
                "ephemeral_1h_input_tokens": u["cache_1h"],
            },
            "output_tokens": u["output_tokens"] if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }

    def headers(self) -> dict[str, str]:
        out = {"request-id": f"req_fake{next(_ids)}"}
        if self.ratelimit_headers:
            out.update(
                {
                    "anthropic-ratelimit-requests-limit": "4000",
                    "anthropic-ratelimit-requests-remaining": "3999",
                    "anthropic-ratelimit-requests-reset": "2030-01-01T00:00:00Z",
                    "anthropic-ratelimit-tokens-limit": "400000",
                    "anthropic-ratelimit-tokens-remaining": "399000",
                }
            )
        return out

    def authorized(self, headers: dict[str, str]) -> bool:
        if self.valid_credentials is None:
            return True
        return self.credential(headers) in self.valid_credentials

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: Any, send: Send, receive: Receive
    ) -> None:
        if path == "/v1/oauth/token" and method == "POST":
            await self.token(body, send)
            return
        if not self.authorized(headers):
            await self.json(
                send,
                401,
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
            )
            return
        if path == "/v1/models" and method == "GET":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-09-29T00:00:00Z"}
                for m in ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001")
            ]
            await self.json(
                send,
                200,
                {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]},
            )
            return
        if path == "/v1/messages/count_tokens" and method == "POST":
            await self.json(send, 200, {"input_tokens": self.usage["input_tokens"]})
            return
        if path != "/v1/messages" or method != "POST":
            await self.json(
                send, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}}
            )
            return
        script = self.next_script()
        if script is not None and await self.scripted(send, script):
            return
        await self.maybe_delay()
        model = self.model_served or (body or {}).get("model", "claude")
        msg_id = f"msg_fake{next(_ids)}"
        if not (body or {}).get("stream"):
            await self.json(
                send,
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": self.text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": self.usage_block(),
                },
                self.headers(),
            )
            return
        events = [
            sse_event(
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": self.usage_block(output_tokens=1),
                    },
                },
                "message_start",
            ),
            sse_event(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            sse_event({"type": "ping"}, "ping"),
        ]
        pieces = _split(self.text, self.chunks)
        for piece in pieces:
            events.append(
                sse_event(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                    "content_block_delta",
                )
            )
        events += [
            sse_event({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse_event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": self.usage["output_tokens"]},
                },
                "message_delta",
            ),
            sse_event({"type": "message_stop"}, "message_stop"),
        ]
        await self.sse(
            send,
            receive,
            events,
            self.headers(),
            hold_before=len(events) - 3 if self.hold is not None else None,
            break_after=script.break_stream_after if script else None,
        )

    async def token(self, body: Any, send: Send) -> None:
        self.token_calls += 1
        if self.token_status != 200:
            await self.json(
                send,
                self.token_status,
                {"error": "invalid_grant", "error_description": "refresh token revoked"},
            )
            return
        await self.json(
            send,
            200,
            {
                "access_token": f"sk-ant-oat01-refreshed-{self.token_calls}",
                "refresh_token": f"sk-ant-ort01-rotated-{self.token_calls}",
                "expires_in": self.token_expires_in,
                "token_type": "Bearer",
            },
        )


def _split(text: str, n: int) -> list[str]:
    n = max(1, n)
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def now_s() -> int:
    return int(time.time())
