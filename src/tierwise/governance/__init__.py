"""Governance: who is calling (principals and their keys), what they may use, and what they may spend."""

from tierwise.governance.principal import ANONYMOUS, UNAUTHENTICATED, Principal

__all__ = ["ANONYMOUS", "UNAUTHENTICATED", "Principal"]
