"""Money is Decimal in Python and integer micro-units in Redis: never a float.

Floats in a ledger drift (and INCRBYFLOAT re-seeding inflated spend N-fold for LiteLLM's
users, #28247); integers added in a Lua script are exact and idempotent to compare.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS_PER_UNIT = 1_000_000
QUANTUM = Decimal("0.000001")


def quantize(amount: Decimal) -> Decimal:
    """Round to the ledger's resolution (one micro-unit of the currency)."""
    return amount.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def to_micros(amount: Decimal) -> int:
    """Decimal money -> integer micro-units, as stored in Redis."""
    return int(quantize(amount) * MICROS_PER_UNIT)


def from_micros(micros: int) -> Decimal:
    """Integer micro-units -> Decimal money."""
    return quantize(Decimal(micros) / MICROS_PER_UNIT)
