"""Reads LiteLLM's model_prices_and_context_window.json format into catalogue entries.

Only token-priced models are kept (an entry needs ``input_cost_per_token`` or
``output_cost_per_token``). USD-per-token floats become integer micro-USD per 1M tokens;
``*_above_<N>k_tokens`` fields become the long-context tier; ``*_priority`` / ``*_flex`` /
``*_batches`` prices become service-tier multipliers of the standard price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import orjson

from relaymeter.domain.pricing import Price, PriceError, usd_per_token_to_micros

MAX_MODEL_LEN = 200
_TIER_KEY = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")
# service tier name -> suffix LiteLLM uses on the price fields
_SERVICE_TIER_SUFFIXES = (("priority", "priority"), ("flex", "flex"), ("batch", "batches"))


class CatalogueError(ValueError):
    """The whole file cannot be used (not JSON, not an object, no priced model)."""


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    model: str
    provider: str
    price: Price


@dataclass(slots=True)
class ParseResult:
    entries: list[CatalogueEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    unpriced: int = 0  # entries without token prices (images, audio per second, ...)


def _micros(entry: dict[str, Any], key: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    return usd_per_token_to_micros(value, key)


def _multiplier(tier_value: int | None, base: int) -> Fraction | None:
    if tier_value is None or base <= 0:
        return None
    return Fraction(tier_value, base).limit_denominator(1_000_000)


def parse_entry(key: str, entry: dict[str, Any]) -> CatalogueEntry | None:
    """One catalogue entry, None when it has no token price; PriceError on a bad value."""
    inp = _micros(entry, "input_cost_per_token")
    out = _micros(entry, "output_cost_per_token")
    if inp is None and out is None:
        return None
    inp = inp or 0
    out = out or 0
    tier_threshold: int | None = None
    tier: dict[str, int | None] = {}
    thresholds = sorted(int(m.group(1)) for k in entry if (m := _TIER_KEY.match(k)))
    if thresholds:
        n = thresholds[0]
        suffix = f"_above_{n}k_tokens"
        tier_threshold = n * 1000
        tier = {
            "input": _micros(entry, "input_cost_per_token" + suffix),
            "output": _micros(entry, "output_cost_per_token" + suffix),
            "cache_read": _micros(entry, "cache_read_input_token_cost" + suffix),
            "cache_write": _micros(entry, "cache_creation_input_token_cost" + suffix),
        }
    service_tiers: list[tuple[str, Fraction]] = []
    for name, suffix in _SERVICE_TIER_SUFFIXES:
        mult = _multiplier(_micros(entry, f"input_cost_per_token_{suffix}"), inp) or _multiplier(
            _micros(entry, f"output_cost_per_token_{suffix}"), out
        )
        if mult is not None and mult > 0:
            service_tiers.append((name, mult))
    provider = entry.get("litellm_provider")
    price = Price(
        input=inp,
        output=out,
        cache_read=_micros(entry, "cache_read_input_token_cost"),
        cache_write_5m=_micros(entry, "cache_creation_input_token_cost"),
        cache_write_1h=_micros(entry, "cache_creation_input_token_cost_above_1hr"),
        tier_threshold=tier_threshold,
        tier_input=tier.get("input"),
        tier_output=tier.get("output"),
        tier_cache_read=tier.get("cache_read"),
        tier_cache_write=tier.get("cache_write"),
        service_tiers=tuple(sorted(service_tiers)),
    )
    return CatalogueEntry(model=key, provider=str(provider or "")[:60], price=price)


def parse_catalogue(data: Any) -> ParseResult:
    """Every usable entry of a decoded LiteLLM price file; raises CatalogueError if none."""
    if not isinstance(data, dict):
        raise CatalogueError(f"expected a JSON object of models, got {type(data).__name__}")
    result = ParseResult()
    for raw_key, entry in data.items():
        key = str(raw_key).strip()
        if key == "sample_spec" or not isinstance(entry, dict):
            continue
        if not key or len(key) > MAX_MODEL_LEN:
            result.skipped.append((key[:60], "model name empty or longer than 200 characters"))
            continue
        try:
            parsed = parse_entry(key, entry)
        except PriceError as exc:
            result.skipped.append((key, str(exc)))
            continue
        if parsed is None:
            result.unpriced += 1
        else:
            result.entries.append(parsed)
    if not result.entries:
        raise CatalogueError(
            "no model with input_cost_per_token / output_cost_per_token found: "
            "is this LiteLLM's model_prices_and_context_window.json?"
        )
    return result


def parse_bytes(content: bytes) -> ParseResult:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise CatalogueError(f"not valid JSON: {exc}") from None
    return parse_catalogue(data)
