"""Who is owed what share of a fee: integer parts-per-million that sum to 10**6."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

PPM = 1_000_000
Role = Literal["owner", "operator", "data"]
ROLES: tuple[Role, ...] = ("owner", "operator", "data")


@dataclass(frozen=True, order=True)
class Payee:
    payee_id: str
    role: Role
    ppm: int

    def to_wire(self) -> list[str | int]:
        return [self.payee_id, self.role, self.ppm]


def split_ppm(weights: Iterable[tuple[str, Role, int]]) -> tuple[Payee, ...]:
    """Turn non-negative integer weights into ppm shares summing to exactly 10**6.

    Equal ``(payee_id, role)`` pairs are merged; rounding uses the largest
    remainder (ties go to the earlier sorted payee) so the result is
    deterministic. Zero shares are dropped.
    """
    merged: dict[tuple[str, Role], int] = {}
    for payee_id, role, weight in weights:
        if weight < 0:
            raise ValueError("weights must be non-negative")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        merged[(payee_id, role)] = merged.get((payee_id, role), 0) + weight
    total = sum(merged.values())
    if total <= 0:
        raise ValueError("at least one positive weight is needed")
    keys = sorted(merged)
    floors = {key: merged[key] * PPM // total for key in keys}
    remainders = sorted(keys, key=lambda key: (-(merged[key] * PPM % total), key))
    for key in remainders[: PPM - sum(floors.values())]:
        floors[key] += 1
    return tuple(Payee(pid, role, ppm) for (pid, role), ppm in sorted(floors.items()) if ppm)


def owner_payees(owner_id: str, operator_id: str, operator_ppm: int) -> tuple[Payee, ...]:
    """``owner/1``: the operator keeps ``operator_ppm``, the model owner the rest."""
    if not 0 <= operator_ppm <= PPM:
        raise ValueError("operator share must be within 0..1000000 ppm")
    return split_ppm(
        [(owner_id, "owner", PPM - operator_ppm), (operator_id, "operator", operator_ppm)]
    )
