"""Fake OpenAI API on loopback: Chat Completions and Responses (JSON and SSE), models, Codex backend.

Wire format as the real API: chat chunks carry ``"usage": null`` until the usage-only chunk
(``choices: []``) that comes only with ``stream_options.include_usage``; Responses streams
``response.*`` events ending in ``response.completed`` with usage incl. cached and reasoning
tokens. ``/backend-api/codex/responses`` behaves like the ChatGPT Codex backend (stream only).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from tests.fakes.anthropic_upstream import _split
from tests.fakes.upstream_base import FakeUpstream, Receive, Send, sse_event

_ids = itertools.count(1)


class FakeOpenAI(FakeUpstream):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.usage = {
            "prompt_tokens": 120,
            "cached_tokens": 100,
            "completion_tokens": 40,
            "reasoning_tokens": 16,
        }
        self.text = "Hello from the fake OpenAI API."
        self.model_served: str | None = None
        self.token_calls = 0

    def headers(self) -> dict[str, str]:
        return {
            "x-request-id": f"req_{next(_ids)}",
            "openai-processing-ms": "12",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
        }

    def error(
        self, message: str, kind: str = "invalid_request_error", code: str | None = None
    ) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    async def handle(
        self, method: str, path: str, headers: dict[str, str], body: Any, send: Send, receive: Receive
    ) -> None:
        if path == "/oauth/token" and method == "POST":
            self.token_calls += 1
            await self.json(
                send,
                200,
                {
                    "access_token": f"codex-access-{self.token_calls}",
                    "refresh_token": f"codex-refresh-{self.token_calls}",
                    "id_token": "x.e30.y",
                    "expires_in": 3600,
                },
            )
            return
        if self.valid_credentials is not None and self.credential(headers) not in self.valid_credentials:
            await self.json(send, 401, self.error("Incorrect API key provided", code="invalid_api_key"))
            return
        if path.endswith("/models") and method == "GET":
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"}
                for m in ("gpt-4o-mini", "gpt-5", "o4-mini")
            ]
            await self.json(send, 200, {"object": "list", "data": data})
            return
        if method != "POST" or not isinstance(body, dict):
            await self.json(send, 404, self.error(f"unknown path {path}"))
            return
        script = self.next_script()
        if script is not None and await self.scripted(send, script):
            return
        await self.maybe_delay()
        model = self.model_served or body.get("model", "gpt")
        break_after = script.break_stream_after if script else None
        if path.endswith("/chat/completions"):
            await self.chat(body, model, send, receive, break_after)
        elif path.endswith("/codex/responses"):
            if not headers.get("chatgpt-account-id"):
                await self.json(send, 400, {"detail": "missing chatgpt-account-id"})
                return
            if body.get("stream") is not True:
                await self.json(send, 400, {"detail": "Stream must be set to true"})
                return
            await self.responses(body, model, send, receive, break_after)
        elif path.endswith("/responses"):
            await self.responses(body, model, send, receive, break_after)
        else:
            await self.json(send, 404, self.error(f"unknown path {path}"))

    def chat_usage(self) -> dict[str, Any]:
        u = self.usage
        return {
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cached_tokens"], "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": u["reasoning_tokens"],
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    async def chat(
        self, body: dict[str, Any], model: str, send: Send, receive: Receive, break_after: int | None
    ) -> None:
        cid = f"chatcmpl-fake{next(_ids)}"
        created = int(time.time())
        if not body.get("stream"):
            await self.json(
                send,
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": self.text,
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self.chat_usage(),
                    "service_tier": "default",
                    "system_fingerprint": "fp_fake",
                },
                self.headers(),
            )
            return
        options = body.get("stream_options") or {}
        with_usage = options.get("include_usage") is True

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            doc: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if with_usage:
                doc["usage"] = None
            return sse_event(doc)

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"content": piece}) for piece in _split(self.text, self.chunks)]
        events.append(chunk({}, "stop"))
        if with_usage:
            events.append(
                sse_event(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "service_tier": "default",
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": self.chat_usage(),
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        await self.sse(
            send,
            receive,
            events,
            self.headers(),
            hold_before=len(events) - 2 if self.hold is not None else None,
            break_after=break_after,
        )

    def response_doc(self, model: str, rid: str, status: str, with_output: bool) -> dict[str, Any]:
        u = self.usage
        doc: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "metadata": {},
        }
        if with_output:
            doc["output"] = [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text, "annotations": []}],
                }
            ]
            doc["usage"] = {
                "input_tokens": u["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
                "output_tokens": u["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            }
        return doc

    async def responses(
        self, body: dict[str, Any], model: str, send: Send, receive: Receive, break_after: int | None
    ) -> None:
        rid = f"resp_fake{next(_ids)}"
        if not body.get("stream"):
            await self.json(send, 200, self.response_doc(model, rid, "completed", True), self.headers())
            return
        seq = itertools.count()
        events = [
            sse_event(
                {
                    "type": "response.created",
                    "sequence_number": next(seq),
                    "response": self.response_doc(model, rid, "in_progress", False),
                },
                "response.created",
            ),
            sse_event(
                {
                    "type": "response.in_progress",
                    "sequence_number": next(seq),
                    "response": self.response_doc(model, rid, "in_progress", False),
                },
                "response.in_progress",
            ),
            sse_event(
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": {
                        "type": "message",
                        "id": "msg_fake",
                        "status": "in_progress",
                        "role": "assistant",
                        "content": [],
                    },
                },
                "response.output_item.added",
            ),
            sse_event(
                {
                    "type": "response.content_part.added",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
                "response.content_part.added",
            ),
        ]
        for piece in _split(self.text, self.chunks):
            events.append(
                sse_event(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": "msg_fake",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                    "response.output_text.delta",
                )
            )
        events += [
            sse_event(
                {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "text": self.text,
                    "logprobs": [],
                },
                "response.output_text.done",
            ),
            sse_event(
                {
                    "type": "response.content_part.done",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": self.text, "annotations": []},
                },
                "response.content_part.done",
            ),
            sse_event(
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": self.response_doc(model, rid, "completed", True)["output"][0],
                },
                "response.output_item.done",
            ),
            sse_event(
                {
                    "type": "response.completed",
                    "sequence_number": next(seq),
                    "response": self.response_doc(model, rid, "completed", True),
                },
                "response.completed",
            ),
        ]
        await self.sse(
            send,
            receive,
            events,
            self.headers(),
            hold_before=len(events) - 2 if self.hold is not None else None,
            break_after=break_after,
        )
