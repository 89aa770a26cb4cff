"""Usage parsers: exact buckets per API format, whatever way the stream is cut into chunks."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from relaymeter.gateway import usage_parsers as up


def sse(doc: object, event: str | None = None, crlf: bool = False) -> bytes:
    text = (f"event: {event}\n" if event else "") + "data: " + orjson.dumps(doc).decode() + "\n\n"
    return text.replace("\n", "\r\n").encode() if crlf else text.encode()


CHAT_CHUNKS = [
    sse(
        {
            "id": "c",
            "model": "gpt-x",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            "usage": None,
        }
    ),
    sse({"id": "c", "model": "gpt-x", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": None}),
    sse(
        {
            "id": "c",
            "model": "gpt-x",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": None,
        }
    ),
]
CHAT_USAGE = sse(
    {
        "id": "c",
        "model": "gpt-x-2025",
        "choices": [],
        "usage": {
            "prompt_tokens": 500,
            "completion_tokens": 80,
            "prompt_tokens_details": {"cached_tokens": 300},
            "completion_tokens_details": {"reasoning_tokens": 50},
        },
    }
)
CHAT_STREAM = b"".join(CHAT_CHUNKS) + CHAT_USAGE + b"data: [DONE]\n\n"

ANTHROPIC_STREAM = b"".join(
    [
        sse(
            {
                "type": "message_start",
                "message": {
                    "model": "claude-sonnet-4-5-20250929",
                    "usage": {
                        "input_tokens": 12,
                        "cache_read_input_tokens": 4000,
                        "cache_creation_input_tokens": 900,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 600,
                            "ephemeral_1h_input_tokens": 300,
                        },
                        "output_tokens": 1,
                    },
                },
            },
            "message_start",
        ),
        sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
            "content_block_delta",
        ),
        sse(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 333}},
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
)


def feed_all(tracker: up.StreamTracker, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    last = 0
    for cut in sorted(set(cuts)):
        out += tracker.feed(data[last:cut])
        last = cut
    out += tracker.feed(data[last:])
    out += tracker.finish()
    return out


@given(st.lists(st.integers(min_value=1, max_value=len(ANTHROPIC_STREAM) - 1), max_size=12))
def test_anthropic_stream_any_chunking(cuts: list[int]) -> None:
    tracker = up.StreamTracker(up.ANTHROPIC)
    forwarded = feed_all(tracker, ANTHROPIC_STREAM, cuts)
    u = tracker.usage
    assert forwarded == ANTHROPIC_STREAM  # relayed untouched
    assert (u.input, u.cache_read, u.cache_creation, u.cache_creation_1h, u.output) == (
        12,
        4000,
        900,
        300,
        333,
    )
    assert u.model == "claude-sonnet-4-5-20250929" and tracker.first_token and tracker.deltas == 1


@given(st.lists(st.integers(min_value=1, max_value=len(CHAT_STREAM) - 1), max_size=12), st.booleans())
def test_chat_stream_strips_only_the_usage_chunk(cuts: list[int], strip: bool) -> None:
    tracker = up.StreamTracker(up.CHAT, strip_usage_chunk=strip)
    forwarded = feed_all(tracker, CHAT_STREAM, cuts)
    u = tracker.usage
    assert (u.input, u.cache_read, u.output, u.reasoning, u.model) == (200, 300, 80, 50, "gpt-x-2025")
    assert tracker.first_token
    expected = b"".join(CHAT_CHUNKS) + b"data: [DONE]\n\n" if strip else CHAT_STREAM
    assert forwarded == expected


def test_crlf_framed_stream_is_parsed() -> None:
    stream = b"".join(
        [
            sse({"type": "response.created", "response": {"usage": None}}, "response.created", crlf=True),
            sse(
                {
                    "type": "response.completed",
                    "response": {
                        "model": "gpt-5",
                        "service_tier": "flex",
                        "usage": {
                            "input_tokens": 1000,
                            "input_tokens_details": {"cached_tokens": 900},
                            "output_tokens": 70,
                            "output_tokens_details": {"reasoning_tokens": 64},
                        },
                    },
                },
                "response.completed",
                crlf=True,
            ),
        ]
    )
    tracker = up.StreamTracker(up.RESPONSES)
    assert tracker.feed(stream) == stream
    u = tracker.usage
    assert (u.input, u.cache_read, u.output, u.reasoning, u.service_tier) == (100, 900, 70, 64, "flex")
    assert tracker.final_response is not None and tracker.final_response["model"] == "gpt-5"


def test_bodies_and_errors() -> None:
    usage, doc = up.parse_body(
        up.CHAT,
        orjson.dumps(
            {
                "model": "m",
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_cache_hit_tokens": 4},
            }
        ),
    )
    assert (usage.input, usage.cache_read, usage.output, usage.total) == (6, 4, 3, 13)
    usage, doc = up.parse_body(up.ANTHROPIC, b"not json")
    assert doc is None and not usage.seen and usage.total == 0
    tracker = up.StreamTracker(up.ANTHROPIC)
    tracker.feed(
        sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
    )
    assert tracker.error == "Overloaded"
    assert up.error_message_of(b'{"error": {"message": "bad key", "type": "x"}}') == "bad key"
    assert up.error_message_of(b"<html>502</html>") == "<html>502</html>"
