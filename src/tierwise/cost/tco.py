"""Self-hosted model -> per-token price, from total cost of ownership.

A local model is not free: the box was bought, it draws power, someone maintains it. Turning that into $/1M tokens
lets the router compare a local tier with a hosted one on the same axis, and the breakdown lets an operator see which
assumption dominates (usually utilisation).

    cost/hour   = hardware / (depreciation_years x 8760 h) + watts / 1000 x $/kWh + maintenance/year / 8760 h
    tokens/hour = tokens_per_second x 3600 x utilisation
    output $/1M = cost/hour / tokens/hour x 1e6
    input  $/1M = output $/1M x input_token_weight   (prefill is far cheaper than decode on the same hardware)

``tokens_per_second`` is decode throughput; 8760 h is a 365-day year, the convention of hourly cloud pricing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tierwise.config.schema import LocalTCO

__all__ = ["HOURS_PER_YEAR", "TCOBreakdown", "tco_breakdown"]

HOURS_PER_YEAR = 8760.0


@dataclass(frozen=True, slots=True)
class TCOBreakdown:
    """The intermediate numbers of the TCO formula, kept so reports can show where the price comes from."""

    hardware_usd_per_hour: float
    power_usd_per_hour: float
    maintenance_usd_per_hour: float
    tokens_per_hour: float
    output_usd_per_mtok: float
    input_usd_per_mtok: float

    @property
    def total_usd_per_hour(self) -> float:
        return self.hardware_usd_per_hour + self.power_usd_per_hour + self.maintenance_usd_per_hour

    def lines(self) -> list[str]:
        """Human-readable breakdown, one quantity per line."""
        return [
            f"hardware     ${self.hardware_usd_per_hour:.6f}/h",
            f"power        ${self.power_usd_per_hour:.6f}/h",
            f"maintenance  ${self.maintenance_usd_per_hour:.6f}/h",
            f"total        ${self.total_usd_per_hour:.6f}/h",
            f"throughput   {self.tokens_per_hour:,.0f} tokens/h (at the configured utilisation)",
            f"output       ${self.output_usd_per_mtok:.6f} per 1M tokens",
            f"input        ${self.input_usd_per_mtok:.6f} per 1M tokens",
        ]


def tco_breakdown(tco: LocalTCO) -> TCOBreakdown:
    """Apply the TCO formula (see module docstring) to one model's ``local`` block."""
    hardware = tco.hardware_usd / (tco.depreciation_years * HOURS_PER_YEAR)
    power = tco.watts / 1000.0 * tco.usd_per_kwh
    maintenance = tco.maintenance_usd_per_year / HOURS_PER_YEAR
    tokens_per_hour = tco.tokens_per_second * 3600.0 * tco.utilisation
    output = (hardware + power + maintenance) / tokens_per_hour * 1e6
    return TCOBreakdown(
        hardware_usd_per_hour=hardware,
        power_usd_per_hour=power,
        maintenance_usd_per_hour=maintenance,
        tokens_per_hour=tokens_per_hour,
        output_usd_per_mtok=output,
        input_usd_per_mtok=output * tco.input_token_weight,
    )
