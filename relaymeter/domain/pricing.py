"""Cost of one usage event from a price row: integer micro-USD, pure arithmetic, no I/O.

Prices are integer micro-USD per 1M tokens (``3_000_000`` = $3 / MTok). Events carry
NON-OVERLAPPING token buckets (``relaymeter.domain.events.canonical_tokens`` already took
out the cached part of OpenAI / Gemini prompt counts and put Gemini's thinking tokens into
output), so every token is billed exactly once:

    input * in + cache_read * cache_read + (cache_creation - 1h part) * write_5m
    + 1h part * write_1h + output * out            (reasoning is inside output)

Above a long-context threshold (prompt = input + cache_read + cache_creation), the tier
rates apply to the whole request, as Anthropic and Google bill it. A service tier
(``priority``, ``flex``, ``batch``) multiplies the whole cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

MTOK = 1_000_000
# Tier names that mean "the normal price" in provider responses.
STANDARD_TIERS = frozenset({"", "default", "auto", "standard", "standard_only", "on_demand"})
MAX_PRICE_MICROS = 10**13  # $10M per MTok: anything above is a typo, not a price


class PriceError(ValueError):
    """An invalid price value; the message names the field."""


@dataclass(frozen=True, slots=True)
class Price:
    """Rates in micro-USD per 1M tokens; ``None`` means "not distinguished" (see fallbacks)."""

    input: int
    output: int
    cache_read: int | None = None  # falls back to input
    cache_write_5m: int | None = None  # falls back to input
    cache_write_1h: int | None = None  # falls back to cache_write_5m
    tier_threshold: int | None = None  # prompt tokens above which the tier rates apply
    tier_input: int | None = None
    tier_output: int | None = None
    tier_cache_read: int | None = None
    tier_cache_write: int | None = None
    # (tier name, multiplier) pairs, e.g. (("flex", Fraction(1, 2)), ("priority", Fraction(2)))
    service_tiers: tuple[tuple[str, Fraction], ...] = field(default=())

    def multiplier(self, service_tier: str | None) -> Fraction:
        name = (service_tier or "").strip().lower()
        if name in STANDARD_TIERS:
            return Fraction(1)
        for tier, mult in self.service_tiers:
            if tier == name:
                return mult
        return Fraction(1)

    @property
    def has_tier(self) -> bool:
        return self.tier_threshold is not None and any(
            v is not None
            for v in (self.tier_input, self.tier_output, self.tier_cache_read, self.tier_cache_write)
        )


@dataclass(frozen=True, slots=True)
class Rates:
    """The rates that apply to one request (tier resolved, fallbacks filled in)."""

    input: int
    output: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    multiplier: Fraction
    long_context: bool
    unit: bool = field(init=False)  # multiplier == 1 (the common case, checked per event)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit", self.multiplier == 1)


def _scale(value: int, num: int, den: int) -> int:
    """value * num / den rounded half up (den > 0)."""
    return (2 * value * num + den) // (2 * den)


def rates_for(price: Price, prompt_tokens: int, service_tier: str | None = None) -> Rates:
    """Resolve the rates for a request whose prompt (input + cache read + cache write) is given."""
    long_context = (
        price.tier_threshold is not None and prompt_tokens > price.tier_threshold and price.has_tier
    )
    return _rates(price, long_context, (service_tier or "").strip().lower())


@lru_cache(maxsize=8192)
def _rates(price: Price, long_context: bool, service_tier: str) -> Rates:
    cache_read = price.cache_read if price.cache_read is not None else price.input
    write_5m = price.cache_write_5m if price.cache_write_5m is not None else price.input
    write_1h = price.cache_write_1h if price.cache_write_1h is not None else write_5m
    if not long_context:
        return Rates(
            price.input, price.output, cache_read, write_5m, write_1h, price.multiplier(service_tier), False
        )
    t_input = price.tier_input if price.tier_input is not None else price.input

    # Cache rates the catalogue does not give for the tier move with the input rate (Anthropic
    # and Google define cache prices as fixed multiples of the input price).
    def moved(base: int) -> int:
        return _scale(base, t_input, price.input) if price.input > 0 else base

    return Rates(
        input=t_input,
        output=price.tier_output if price.tier_output is not None else price.output,
        cache_read=price.tier_cache_read if price.tier_cache_read is not None else moved(cache_read),
        cache_write_5m=price.tier_cache_write if price.tier_cache_write is not None else moved(write_5m),
        cache_write_1h=moved(write_1h),
        multiplier=price.multiplier(service_tier),
        long_context=True,
    )


def cost_micros(
    price: Price,
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_creation_tokens: int = 0,
    cache_creation_1h_tokens: int = 0,
    service_tier: str | None = None,
) -> int:
    """Cost of one request in micro-USD, rounded half up once (never per bucket).

    Token counts are the canonical non-overlapping buckets; ``cache_creation_1h_tokens`` is
    the part of ``cache_creation_tokens`` written with a 1-hour TTL. Reasoning tokens are
    inside ``output_tokens`` and cost nothing extra.
    """
    r = rates_for(price, input_tokens + cache_read_tokens + cache_creation_tokens, service_tier)
    return cost_with_rates(
        r, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cache_creation_1h_tokens
    )


def cost_with_rates(
    r: Rates,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_creation_tokens: int,
    cache_creation_1h_tokens: int,
) -> int:
    """cost_micros() once the rates are resolved (lets callers reuse one Rates per model)."""
    one_hour = cache_creation_1h_tokens  # the 1-hour part of cache_creation, clamped to it
    if one_hour > cache_creation_tokens:
        one_hour = cache_creation_tokens
    elif one_hour < 0:
        one_hour = 0
    numerator = (
        input_tokens * r.input
        + cache_read_tokens * r.cache_read
        + (cache_creation_tokens - one_hour) * r.cache_write_5m
        + one_hour * r.cache_write_1h
        + output_tokens * r.output
    )
    if r.unit:
        return (2 * numerator + MTOK) // (2 * MTOK)
    mult = r.multiplier
    return _scale(numerator, mult.numerator, mult.denominator * MTOK)


# --- conversions at the edges -----------------------------------------------------------


def usd_per_mtok_to_micros(value: object, field_name: str = "price") -> int:
    """'3', 3, 0.075 or Decimal('2.5') USD per 1M tokens -> micro-USD per 1M tokens."""
    if isinstance(value, bool) or value is None:
        raise PriceError(f"{field_name}: expected a number of USD per 1M tokens")
    try:
        dec = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise PriceError(f"{field_name}: not a number: {str(value)[:40]!r}") from None
    if not dec.is_finite() or dec < 0:
        raise PriceError(f"{field_name}: must be a finite number >= 0")
    micros = int((dec * MTOK).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micros > MAX_PRICE_MICROS:
        raise PriceError(f"{field_name}: {value} USD per 1M tokens is not a plausible price")
    return micros


def usd_per_token_to_micros(value: object, field_name: str = "price") -> int:
    """LiteLLM's USD per token (e.g. 3e-06) -> micro-USD per 1M tokens (3_000_000)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise PriceError(f"{field_name}: expected a number of USD per token")
    try:
        dec = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise PriceError(f"{field_name}: not a number: {str(value)[:40]!r}") from None
    if not dec.is_finite() or dec < 0:
        raise PriceError(f"{field_name}: must be a finite number >= 0")
    micros = int((dec * 10**12).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if micros > MAX_PRICE_MICROS:
        raise PriceError(f"{field_name}: {value} USD per token is not a plausible price")
    return micros


def micros_to_usd_per_mtok(micros: int | None) -> float | None:
    return None if micros is None else micros / MTOK


def parse_multiplier(value: object, field_name: str = "multiplier") -> Fraction:
    """A service-tier multiplier such as 2, '0.5' or 1.75 as an exact fraction (0 < m <= 100)."""
    if isinstance(value, bool):
        raise PriceError(f"{field_name}: expected a number")
    try:
        frac = Fraction(Decimal(str(value).strip()))
    except (InvalidOperation, ValueError, TypeError, OverflowError):
        raise PriceError(f"{field_name}: not a number: {str(value)[:40]!r}") from None
    if not 0 < frac <= 100:
        raise PriceError(f"{field_name}: must be > 0 and <= 100")
    return frac.limit_denominator(1_000_000)


def price_from_usd(
    *,
    input: object,
    output: object,
    cache_read: object | None = None,
    cache_write_5m: object | None = None,
    cache_write_1h: object | None = None,
    tier_threshold: int | None = None,
    tier_input: object | None = None,
    tier_output: object | None = None,
    tier_cache_read: object | None = None,
    tier_cache_write: object | None = None,
    service_tiers: dict[str, object] | None = None,
) -> Price:
    """A Price from USD-per-1M-token values as people type them; PriceError names a bad field."""

    def opt(value: object | None, name: str) -> int | None:
        return None if value is None else usd_per_mtok_to_micros(value, name)

    tier_values = {
        "tier_input": opt(tier_input, "tier_input"),
        "tier_output": opt(tier_output, "tier_output"),
        "tier_cache_read": opt(tier_cache_read, "tier_cache_read"),
        "tier_cache_write": opt(tier_cache_write, "tier_cache_write"),
    }
    if tier_threshold is None and any(v is not None for v in tier_values.values()):
        raise PriceError("tier_threshold: needed when long-context tier prices are given")
    if tier_threshold is not None:
        if isinstance(tier_threshold, bool) or not isinstance(tier_threshold, int) or tier_threshold <= 0:
            raise PriceError("tier_threshold: must be a positive number of prompt tokens")
        if all(v is None for v in tier_values.values()):
            raise PriceError("tier_threshold: give at least one tier price (tier_input, tier_output, ...)")
    tiers: list[tuple[str, Fraction]] = []
    for name, value in (service_tiers or {}).items():
        key = str(name).strip().lower()
        if not key or key in STANDARD_TIERS:
            raise PriceError(f"service tier {name!r}: name a non-standard tier such as priority or flex")
        tiers.append((key, parse_multiplier(value, f"service tier {key}")))
    return Price(
        input=usd_per_mtok_to_micros(input, "input"),
        output=usd_per_mtok_to_micros(output, "output"),
        cache_read=opt(cache_read, "cache_read"),
        cache_write_5m=opt(cache_write_5m, "cache_write_5m"),
        cache_write_1h=opt(cache_write_1h, "cache_write_1h"),
        tier_threshold=tier_threshold,
        service_tiers=tuple(sorted(tiers)),
        **tier_values,
    )


def price_to_usd(price: Price) -> dict[str, object]:
    """A Price as USD per 1M tokens for display and JSON (None = not distinguished)."""
    return {
        "input": micros_to_usd_per_mtok(price.input),
        "output": micros_to_usd_per_mtok(price.output),
        "cache_read": micros_to_usd_per_mtok(price.cache_read),
        "cache_write_5m": micros_to_usd_per_mtok(price.cache_write_5m),
        "cache_write_1h": micros_to_usd_per_mtok(price.cache_write_1h),
        "tier": None
        if price.tier_threshold is None
        else {
            "threshold_tokens": price.tier_threshold,
            "input": micros_to_usd_per_mtok(price.tier_input),
            "output": micros_to_usd_per_mtok(price.tier_output),
            "cache_read": micros_to_usd_per_mtok(price.tier_cache_read),
            "cache_write": micros_to_usd_per_mtok(price.tier_cache_write),
        },
        "service_tiers": {name: float(mult) for name, mult in price.service_tiers},
    }
