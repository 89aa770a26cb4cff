"""redacted_json(): its shortcut for plain records gives exactly what redact() gives."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relaymeter.domain.redact import REDACTED, compact_json, redact, redacted_json
from tests.fakes.cpa import make_record

keys = st.sampled_from(
    [
        "a", "api_key", "API-Key", "x-api-key", "token", "tokens", "access_token_sha256", "Authorization",
        "client_secret", "Password", "cookie", "set-cookie", "source", "id_token", "monkey", "\u017fecret",
    ]
) | st.text(max_size=8)  # fmt: skip
texts = st.sampled_from(
    [
        "", "plain", "Bearer abcdefghijkl", "BEARER abcdefghijkl", "bearer\tabcdefghijk", "x sk-ant-abcdefgh",
        "SK-abcdefghij", "AIzaSyABCDEFGHIJKL", "ghp_abcdefghijkl", "\u017fk-abcdefghij", 'say "sk-abcdefgh"',
        "high_value_1234", "use***@example.com",
    ]
) | st.text(max_size=12)  # fmt: skip
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=15,
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(keys, values, max_size=8), st.none() | st.fixed_dictionaries({"source": texts}))
def test_redacted_json_equals_redacting_every_value(
    value: dict[str, Any], overrides: dict[str, Any] | None
) -> None:
    expected = compact_json(redact({**value, **overrides} if overrides else value))
    assert redacted_json(value, overrides) == expected


def test_plain_records_keep_nested_values_and_lose_top_level_secrets() -> None:
    record = orjson.loads(orjson.dumps(make_record(3)))
    raw = orjson.loads(redacted_json(record, {"source": "use***@example.com"}))
    assert raw["api_key"] == REDACTED and raw["source"] == "use***@example.com"
    assert raw["tokens"] == record["tokens"] and list(raw) == list(record)
    record["response_headers"]["Set-Cookie"] = ["session=abc"]  # a secret one level down
    record["fail"]["body"] = "upstream said: invalid key sk-ant-api03-abcdefgh"  # a secret in text
    raw = orjson.loads(redacted_json(record))
    assert raw["response_headers"]["Set-Cookie"] == REDACTED
    assert "sk-ant-api03" not in raw["fail"]["body"]
