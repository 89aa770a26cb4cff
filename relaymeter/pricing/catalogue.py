"""The in-memory price catalogue: origin precedence, model matching, and the event Pricer.

Matching a served model name, first hit wins, for the name and then for each shorter
form of it: the exact key, then provider-prefixed keys (``anthropic/claude-...``), then the
name with a date / version / effort suffix stripped (``claude-sonnet-4-5-20250929`` ->
``claude-sonnet-4-5``, ``gpt-5-codex-high`` -> ``gpt-5-codex``). Comparison ignores case.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from relaymeter.domain.events import UsageEvent
from relaymeter.domain.pricing import Price, Rates, cost_micros, cost_with_rates, rates_for
from relaymeter.pricing.litellm import CatalogueEntry

ORIGINS = ("override", "synced", "snapshot")  # highest precedence first
ORIGIN_RANK = {name: i for i, name in enumerate(ORIGINS)}

# Event provider -> key prefixes used by LiteLLM for the same models.
_PROVIDER_PREFIXES: dict[str, tuple[str, ...]] = {
    "claude": ("anthropic",),
    "anthropic": ("anthropic",),
    "codex": ("openai",),
    "openai": ("openai",),
    "azure": ("azure", "openai"),
    "gemini": ("gemini", "vertex_ai"),
    "gemini-cli": ("gemini", "vertex_ai"),
    "aistudio": ("gemini",),
    "antigravity": ("gemini", "vertex_ai"),
    "vertex": ("vertex_ai", "gemini"),
    "google": ("gemini", "vertex_ai"),
    "xai": ("xai",),
    "deepseek": ("deepseek",),
    "kimi": ("moonshot",),
    "qwen": ("dashscope",),
}

# Suffixes that do not change the price, tried in order; one is removed per step.
_SUFFIXES = [
    re.compile(p)
    for p in (
        r"\s*\([^()]*\)$",  # CPA reasoning suffix: gpt-5(high), claude-sonnet-4-5(8192)
        r"-thinking(?:-\d+)?$",
        r"-(?:minimal|low|medium|high|xhigh|none)$",  # reasoning effort aliases: gpt-5-codex-high
        r"[-@]\d{8}$",  # -20250929, @20240620
        r"-\d{4}-\d{2}-\d{2}$",  # -2024-08-06
        r"-\d{2}-\d{4}$",  # -09-2025
        r"-\d{2}-\d{2}$",  # -05-20
        r"-(?:preview|exp|latest)$",
        r"-v\d+(?::\d+)?$",  # -v1:0
        r"-\d{3,4}$",  # -002, -0613
    )
]
_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class PricedEntry:
    model: str
    provider: str
    origin: str
    price: Price
    updated_ms: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    entry: PricedEntry
    key: str  # the catalogue key that matched
    how: str  # exact | prefixed | stripped
    # Rates of a standard-tier request below any long-context threshold, resolved once.
    base_rates: Rates | None = None
    simple: bool = False  # True when base_rates apply to every standard-tier request
    long_rates: Rates | None = None  # standard tier above the long-context threshold


def name_variants(model: str) -> Iterator[str]:
    """The model name, then each shorter form with one more suffix removed (lower case)."""
    name = model.strip().lower()
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        yield name
        if "/" in name:
            bare = name.rsplit("/", 1)[1]
            if bare and bare not in seen:
                yield from name_variants(bare)
                return
        for pattern in _SUFFIXES:
            shorter = pattern.sub("", name)
            if shorter != name and shorter:
                name = shorter
                break
        else:
            return


def merge_origins(entries: Iterable[PricedEntry]) -> dict[str, PricedEntry]:
    """One entry per (lower-cased) model: override > synced > snapshot."""
    best: dict[str, PricedEntry] = {}
    for entry in entries:
        key = entry.model.strip().lower()
        current = best.get(key)
        if current is None or ORIGIN_RANK.get(entry.origin, 99) < ORIGIN_RANK.get(current.origin, 99):
            best[key] = entry
    return best


class Catalogue:
    """Effective prices by model, with memoized matching.

    User overrides are matched first with every rule (an override for ``claude-sonnet-4-5``
    also prices ``claude-sonnet-4-5-20250929``); then synced and shipped prices, merged per
    key (synced beats snapshot), so an exact shipped key still beats a shortened synced one.
    """

    def __init__(self, entries: Iterable[PricedEntry]) -> None:
        items = list(entries)
        self.by_key = merge_origins(items)
        self._layers = (
            merge_origins(e for e in items if e.origin == "override"),
            merge_origins(e for e in items if e.origin != "override"),
        )
        self._cache: dict[tuple[str, str], Match | None] = {}

    def __len__(self) -> int:
        return len(self.by_key)

    def match(self, model: str, provider: str = "") -> Match | None:
        cache_key = (model, provider)
        try:
            return self._cache[cache_key]
        except KeyError:
            pass
        found = None
        for layer in self._layers:
            found = self._find(layer, model, provider)
            if found is not None:
                break
        if found is not None:
            price = found.entry.price
            long_rates = (
                rates_for(price, price.tier_threshold + 1) if price.tier_threshold is not None else None
            )
            found = Match(
                found.entry, found.key, found.how, rates_for(price, 0), not price.has_tier, long_rates
            )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[cache_key] = found
        return found

    @staticmethod
    def _find(by_key: dict[str, PricedEntry], model: str, provider: str) -> Match | None:
        if not by_key or not model or model == "-":
            return None
        p = provider.strip().lower()
        prefixes = list(_PROVIDER_PREFIXES.get(p, ()))
        if p and p not in prefixes:
            prefixes.append(p)
        first = True
        for name in name_variants(model):
            entry = by_key.get(name)
            if entry is not None:
                return Match(entry, name, "exact" if first else "stripped")
            for prefix in prefixes:
                key = f"{prefix}/{name}"
                entry = by_key.get(key)
                if entry is not None:
                    return Match(entry, key, "prefixed" if first else "stripped")
            first = False
        return None


class Pricer:
    """Sets cost_micros and price_missing on events (the writer's ``pricer``); no I/O."""

    def __init__(self, catalogue: Catalogue, version: str | None = None) -> None:
        self.catalogue = catalogue
        self.version = version

    @classmethod
    def from_entries(cls, entries: Iterable[PricedEntry], version: str | None = None) -> Pricer:
        return cls(Catalogue(entries), version)

    def price(self, model: str, provider: str = "") -> Match | None:
        return self.catalogue.match(model, provider)

    def cost(self, ev: UsageEvent) -> tuple[int, bool]:
        """(cost_micros, price_missing) for one event."""
        return self.cost_of(
            ev.actual_model or ev.model,
            ev.provider,
            ev.input_tokens,
            ev.output_tokens,
            ev.cache_read_tokens,
            ev.cache_creation_tokens,
            ev.cache_creation_1h_tokens,
            ev.service_tier,
        )

    def cost_of(
        self,
        model: str,
        provider: str,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int,
        cache_creation_tokens: int,
        cache_creation_1h_tokens: int,
        service_tier: str | None,
    ) -> tuple[int, bool]:
        """(cost_micros, price_missing) from an event's served model, provider and token buckets."""
        if not (input_tokens or output_tokens or cache_read_tokens or cache_creation_tokens):
            return 0, False
        found = self.catalogue.match(model, provider)
        if found is None:
            return 0, True
        if not service_tier and found.base_rates is not None:
            rates = found.base_rates
            threshold = found.entry.price.tier_threshold
            if not found.simple and found.long_rates is not None and threshold is not None:
                if input_tokens + cache_read_tokens + cache_creation_tokens > threshold:
                    rates = found.long_rates
            return (
                cost_with_rates(
                    rates,
                    input_tokens,
                    output_tokens,
                    cache_read_tokens,
                    cache_creation_tokens,
                    cache_creation_1h_tokens,
                ),
                False,
            )
        return (
            cost_micros(
                found.entry.price,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read_tokens,
                cache_creation_tokens=cache_creation_tokens,
                cache_creation_1h_tokens=cache_creation_1h_tokens,
                service_tier=service_tier,
            ),
            False,
        )

    def apply(self, events: Sequence[UsageEvent]) -> None:
        for ev in events:
            ev.cost_micros, ev.price_missing = self.cost(ev)


def entries_from_catalogue(
    items: Iterable[CatalogueEntry], origin: str, updated_ms: int = 0
) -> list[PricedEntry]:
    return [PricedEntry(e.model, e.provider, origin, e.price, updated_ms) for e in items]
