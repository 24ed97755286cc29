"""What a fine-tuning job will cost, estimated before it starts. Pure: no I/O, no clock.

Prices change and OpenAI publishes no price API, so they are kept here, dated, with where each came
from, and an operator can override any of them with FINETUNE_TRAINING_PRICES without a release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from bot import tokens
from bot.training_data import ValidationReport

PRICES_VARIABLE = "FINETUNE_TRAINING_PRICES"


@dataclass(frozen=True)
class Price:
    usd_per_million_training_tokens: float
    as_of: str  # ISO date the figure was checked
    source: str  # where it comes from, and "unconfirmed" when no primary source was found


_AS_OF = "2026-06-01"
# FACTS-interactive §11. Keys are base-model prefixes: a dated snapshot or ft:… model takes the
# longest that matches (gpt-4o-mini-2024-07-18 → gpt-4o-mini, not gpt-4o).
PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(3.00, _AS_OF, "OpenAI pricing page as quoted by tokonomics.ca (2nd-hand)"),
    "gpt-4o": Price(25.00, _AS_OF, "OpenAI pricing page as quoted by tokonomics.ca (2nd-hand)"),
    "gpt-4.1-nano": Price(1.50, _AS_OF, "commonly cited figure, unconfirmed"),
    "gpt-4.1-mini": Price(5.00, _AS_OF, "commonly cited figure, unconfirmed"),
    "gpt-4.1": Price(25.00, _AS_OF, "commonly cited figure, unconfirmed"),
}

# OpenAI's default-epochs rule, from the cookbook (FACTS-interactive §10).
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

_ENTRY = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._:-]*)\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*")
_OVERRIDE_SOURCE = f"set by the operator ({PRICES_VARIABLE})"


def load_prices(env: Mapping[str, str], today: str | None = None) -> dict[str, Price] | str:
    """The table with the operator's overrides, or one error line naming the variable.

    `FINETUNE_TRAINING_PRICES="gpt-4o-mini=3.00,gpt-4o=25"` (US dollars per million training
    tokens); a model not listed keeps its built-in price, a new one is added. `today` dates the
    overrides (the caller's clock); without it they are marked "operator override".
    """
    raw = env.get(PRICES_VARIABLE, "").strip()
    prices = dict(PRICES)
    if not raw:
        return prices
    for entry in (e for e in raw.split(",") if e.strip()):
        match = _ENTRY.fullmatch(entry)
        if match is None:
            shown = entry.strip()[:40]
            return (
                f"{PRICES_VARIABLE} must list model=price pairs separated by commas, in US dollars per "
                f"million training tokens, like gpt-4o-mini=3.00,gpt-4o=25; not: {shown!r}"
            )
        model, value = match.group(1), float(match.group(2))
        if not 0 < value <= 10_000:
            return (
                f"{PRICES_VARIABLE}: the price for {model} must be above 0 and at most 10000, got {value:g}"
            )
        prices[tokens.base_model(model)] = Price(value, today or "operator override", _OVERRIDE_SOURCE)
    return prices


def price_for(model: str, prices: Mapping[str, Price]) -> Price | None:
    base = tokens.base_model(model)
    for name in sorted(prices, key=len, reverse=True):
        if base == name or base.startswith(name + "-") or base.startswith(name + ":"):
            return prices[name]
    return None


def default_epochs(examples: int) -> int:
    """How many epochs OpenAI picks when n_epochs is "auto" (the cookbook's rule, floors included):
    3, more for small files (~100 example passes), fewer for big ones (~25,000 at most)."""
    if examples <= 0:
        return TARGET_EPOCHS
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // examples)
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


@dataclass(frozen=True)
class CostEstimate:
    epochs: int
    epochs_auto: bool  # chosen by default_epochs, as OpenAI will when n_epochs is "auto"
    billed_tokens: int  # billed tokens per epoch, times epochs
    usd: float | None  # None when the model has no price in the table
    price: Price | None
    model: str


def estimate_cost(
    report: ValidationReport, *, epochs: int | None, prices: Mapping[str, Price]
) -> CostEstimate:
    """Training tokens, times epochs, times the price per token. An estimate: OpenAI bills what it counts."""
    examples = report.tokens.examples if report.tokens is not None else report.examples
    chosen = epochs if epochs is not None else default_epochs(examples)
    billed = (report.tokens.billed_per_epoch if report.tokens is not None else 0) * chosen
    price = price_for(report.model, prices)
    usd = None if price is None else billed * price.usd_per_million_training_tokens / 1_000_000
    return CostEstimate(
        epochs=chosen,
        epochs_auto=epochs is None,
        billed_tokens=billed,
        usd=usd,
        price=price,
        model=report.model,
    )
