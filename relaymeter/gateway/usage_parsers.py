"""Token usage from upstream JSON bodies and SSE streams (Anthropic Messages, OpenAI Chat, Responses).

Counts are converted to relaymeter's non-overlapping buckets: ``input`` is uncached input,
``cache_read`` / ``cache_creation`` are separate, ``output`` includes reasoning. Stream
trackers look only at the few events that carry usage, so relaying stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

ANTHROPIC = "anthropic"
CHAT = "chat"
RESPONSES = "responses"


@dataclass(slots=True)
class Usage:
    input: int = 0
    cache_read: int = 0
    cache_creation: int = 0
    cache_creation_1h: int = 0
    output: int = 0
    reasoning: int = 0
    model: str = ""
    service_tier: str | None = None
    seen: bool = False  # the upstream reported usage
    raw: dict[str, Any] | None = None  # the upstream usage object as reported

    @property
    def total(self) -> int:
        return self.input + self.cache_read + self.cache_creation + self.output


def _int(value: Any) -> int:
    if type(value) is int:  # the usual count (bool, a subclass, is not one)
        return value if value > 0 else 0
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float):
        return max(0, int(value))
    return 0


def apply_anthropic(usage: Usage, u: dict[str, Any]) -> None:
    """Anthropic usage: buckets are already separate. Values are cumulative, so keep the largest."""
    usage.seen = True
    usage.raw = u if usage.raw is None else {**usage.raw, **u}
    usage.input = max(usage.input, _int(u.get("input_tokens")))
    usage.cache_read = max(usage.cache_read, _int(u.get("cache_read_input_tokens")))
    creation = _int(u.get("cache_creation_input_tokens"))
    detail = u.get("cache_creation")
    one_hour = 0
    if isinstance(detail, dict):
        one_hour = _int(detail.get("ephemeral_1h_input_tokens"))
        creation = max(creation, one_hour + _int(detail.get("ephemeral_5m_input_tokens")))
    usage.cache_creation = max(usage.cache_creation, creation)
    usage.cache_creation_1h = min(max(usage.cache_creation_1h, one_hour), usage.cache_creation)
    usage.output = max(usage.output, _int(u.get("output_tokens")))
    tier = u.get("service_tier")
    if isinstance(tier, str) and tier:
        usage.service_tier = tier


def apply_chat(usage: Usage, u: dict[str, Any]) -> None:
    """OpenAI Chat usage: prompt_tokens includes cached tokens, completion includes reasoning."""
    usage.seen = True
    usage.raw = u
    prompt = _int(u.get("prompt_tokens"))
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = cached or _int(u.get("prompt_cache_hit_tokens"))  # DeepSeek-style
    cached = min(cached, prompt)
    usage.cache_read = cached
    usage.input = prompt - cached
    usage.output = _int(u.get("completion_tokens"))
    out_details = u.get("completion_tokens_details")
    if isinstance(out_details, dict):
        usage.reasoning = min(_int(out_details.get("reasoning_tokens")), usage.output)


def apply_responses(usage: Usage, u: dict[str, Any]) -> None:
    """OpenAI Responses usage: input_tokens includes cached, output_tokens includes reasoning."""
    usage.seen = True
    usage.raw = u
    total_in = _int(u.get("input_tokens"))
    details = u.get("input_tokens_details")
    cached = min(_int(details.get("cached_tokens")) if isinstance(details, dict) else 0, total_in)
    usage.cache_read = cached
    usage.input = total_in - cached
    usage.output = _int(u.get("output_tokens"))
    out_details = u.get("output_tokens_details")
    if isinstance(out_details, dict):
        usage.reasoning = min(_int(out_details.get("reasoning_tokens")), usage.output)


def parse_body(dialect: str, body: bytes) -> tuple[Usage, Any]:
    """Usage from a whole JSON response body; also returns the decoded body (None if not JSON)."""
    usage = Usage()
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage, None
    if not isinstance(doc, dict):
        return usage, doc
    model = doc.get("model")
    if isinstance(model, str):
        usage.model = model
    u = doc.get("usage")
    if isinstance(u, dict):
        if dialect == ANTHROPIC:
            apply_anthropic(usage, u)
        elif dialect == CHAT:
            apply_chat(usage, u)
        else:
            apply_responses(usage, u)
    tier = doc.get("service_tier")
    if isinstance(tier, str) and tier and not usage.service_tier:
        usage.service_tier = tier
    return usage, doc


_CHAT_CONTENT = re.compile(rb'"(?:content|reasoning_content|reasoning|arguments|refusal)":"[^"]')
_DELTA_MARKERS = {
    ANTHROPIC: b'"content_block_delta"',
    RESPONSES: b'.delta"',
    CHAT: b'"delta"',
}


class StreamTracker:
    """Follows an SSE stream: usage, served model, first-token time, errors.

    ``feed`` returns the bytes to forward: the chunk itself, except when ``strip_usage_chunk``
    is set (the gateway asked for OpenAI's usage chunk on the client's behalf), where the
    usage-only chunk is removed from the stream.
    """

    __slots__ = (
        "_buf",
        "_delta_marker",
        "_tail",
        "bytes_seen",
        "deltas",
        "dialect",
        "error",
        "final_response",
        "first_token",
        "strip",
        "usage",
    )

    def __init__(self, dialect: str, *, strip_usage_chunk: bool = False) -> None:
        self.dialect = dialect
        self.strip = strip_usage_chunk
        self.usage = Usage()
        self._buf = b""
        self._tail = b""
        self._delta_marker = _DELTA_MARKERS[dialect]
        self.first_token = False
        self.deltas = 0  # content delta events seen (an estimate of output when usage never came)
        self.bytes_seen = 0
        self.error: str | None = None
        self.final_response: dict[str, Any] | None = None  # Responses: the completed response

    def feed(self, chunk: bytes) -> bytes:
        self.bytes_seen += len(chunk)
        marker = self._delta_marker
        # Markers may be split across chunks: also look at the seam with the previous chunk.
        edge = len(marker) - 1
        found = chunk.count(marker)
        if self._tail:
            found += (self._tail[-edge:] + chunk[:edge]).count(marker)
        self.deltas += found
        if not self.first_token:
            if self.dialect == CHAT:
                self.first_token = (
                    _CHAT_CONTENT.search(chunk) is not None
                    or _CHAT_CONTENT.search(self._tail + chunk[:48]) is not None
                )
            else:
                self.first_token = found > 0
        self._tail = chunk[-48:] if len(chunk) >= 48 else (self._tail + chunk)[-48:]
        if b"\r" in chunk:
            chunk_n = chunk.replace(b"\r\n", b"\n")
        else:
            chunk_n = chunk
        if self.strip:
            return self._feed_framed(chunk_n)
        # Fast path: only events that may carry usage or an error are decoded.
        buf = self._buf + chunk_n if self._buf else chunk_n
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return chunk
        self._buf = buf[end + 2 :]
        complete = buf[: end + 2]
        if b'"usage"' in complete or b"error" in complete or b"response.failed" in complete:
            for start, stop in _marked_events(complete):
                self._event(complete[start:stop])
        return chunk

    def _feed_framed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2 :]
        out = []
        for event in buf[: end + 2].split(b"\n\n"):
            if not event:
                continue
            if self._event(event):
                continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        """Process a trailing event without its blank line; return bytes still to forward."""
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return rest if self.strip else b""
        dropped = self._event(rest)
        return b"" if (dropped or not self.strip) else rest

    def _event(self, event: bytes) -> bool:
        """Handle one SSE event; True when it is the usage-only chunk to strip."""
        if b'"usage"' not in event and b"error" not in event and b"response.failed" not in event:
            return False
        data = _data_of(event)
        if not data or data == b"[DONE]":
            return False
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(doc, dict):
            return False
        if self.dialect == ANTHROPIC:
            self._anthropic(doc)
            return False
        if self.dialect == CHAT:
            return self._chat(doc)
        self._responses(doc)
        return False

    def _anthropic(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type")
        if kind == "message_start":
            message = doc.get("message")
            if isinstance(message, dict):
                if isinstance(message.get("model"), str):
                    self.usage.model = message["model"]
                if isinstance(message.get("usage"), dict):
                    apply_anthropic(self.usage, message["usage"])
        elif kind == "message_delta":
            if isinstance(doc.get("usage"), dict):
                apply_anthropic(self.usage, doc["usage"])
        elif kind == "error":
            self.error = _error_text(doc.get("error"))

    def _chat(self, doc: dict[str, Any]) -> bool:
        if "error" in doc and isinstance(doc["error"], dict | str):
            self.error = _error_text(doc["error"])
            return False
        u = doc.get("usage")
        if not isinstance(u, dict):
            return False
        if isinstance(doc.get("model"), str):
            self.usage.model = doc["model"]
        apply_chat(self.usage, u)
        tier = doc.get("service_tier")
        if isinstance(tier, str) and tier:
            self.usage.service_tier = tier
        return self.strip and not doc.get("choices")

    def _responses(self, doc: dict[str, Any]) -> None:
        kind = doc.get("type")
        if kind == "error":
            self.error = _error_text(doc.get("error") or doc.get("message") or doc)
            return
        response = doc.get("response")
        if not isinstance(response, dict):
            return
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.final_response = response
            if isinstance(response.get("model"), str):
                self.usage.model = response["model"]
            if isinstance(response.get("usage"), dict):
                apply_responses(self.usage, response["usage"])
            tier = response.get("service_tier")
            if isinstance(tier, str) and tier:
                self.usage.service_tier = tier
            if kind == "response.failed":
                self.error = _error_text(response.get("error")) or "response failed"


_MARKERS = (b'"usage"', b"error", b"response.failed")


def _marked_events(complete: bytes) -> list[tuple[int, int]]:
    """Spans of the events (in stream order) that contain a usage or error marker."""
    markers = _MARKERS if b"error" in complete or b"response.failed" in complete else _MARKERS[:1]
    spans: list[tuple[int, int]] = []
    for marker in markers:
        pos = complete.find(marker)
        while pos >= 0:
            start = complete.rfind(b"\n\n", 0, pos)
            start = 0 if start < 0 else start + 2
            stop = complete.find(b"\n\n", pos)
            if stop < 0:
                stop = len(complete)
            spans.append((start, stop))
            pos = complete.find(marker, stop)
    return spans if len(markers) == 1 else sorted(set(spans))


def _data_of(event: bytes) -> bytes:
    start = event.find(b"data:")
    if start >= 0 and (start == 0 or event[start - 1] == 10) and event.find(b"\ndata:", start) < 0:
        # The usual event: one data line.
        end = event.find(b"\n", start)
        return (event[start + 5 :] if end < 0 else event[start + 5 : end]).lstrip(b" ")
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    return b"\n".join(parts)


def _error_text(err: Any) -> str:
    if isinstance(err, dict):
        message = err.get("message") or err.get("type") or err.get("code")
        return str(message)[:500] if message else orjson.dumps(err).decode()[:500]
    return str(err)[:500] if err else ""


def error_message_of(body: bytes) -> str:
    """A short message from an upstream error body (either dialect), for the event record."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:300].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return _error_text(doc.get("error") or doc.get("message") or doc)
    return str(doc)[:300]
