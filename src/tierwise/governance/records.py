"""Governance data: validated input (one place, whoever calls), records, errors, and the store protocol.

See :mod:`tierwise.governance.store` for what principals and keys are and where they live."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

T = TypeVar("T")

#: Largest budget or revenue accepted (USD): anything above is a typo (or a unit mistake), not a budget.
MAX_USD = 1e9
#: Largest rpm / tpm accepted.
MAX_RATE = 1_000_000_000
#: Longest rotation grace period (a year).
MAX_GRACE_S = 366 * 86400.0
DEFAULT_GRACE_S = 3600.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# -- errors ---------------------------------------------------------------------------------------------------


class GovernanceError(Exception):
    """A governance operation failed; ``status``/``type``/``code``/``param`` are what the admin API answers."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidInput(GovernanceError):
    code = "invalid_value"


class NotFound(GovernanceError):
    status = 404
    code = "not_found"


class Conflict(GovernanceError):
    status = 409
    code = "conflict"


class GovernanceStoreError(GovernanceError):
    """The store cannot be opened, read or written (no key, hash or password in the message)."""

    status = 503
    type = "server_error"
    code = "governance_store_unavailable"


# -- validated input ------------------------------------------------------------------------------------------

Usd = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
Rate = Annotated[int, Field(gt=0, le=MAX_RATE)]


def _name(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if not NAME_RE.match(value):
        raise ValueError(f"{what} must be 1-128 characters of letters, digits and . _ : @ + - (starting with a "
                         "letter or digit)")
    return value


def _label(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise ValueError("must not be empty (omit it, or null, for none)")
    if len(value) > 200 or _CONTROL.search(value):
        raise ValueError("must be at most 200 characters, without control characters")
    return value


class _Input(BaseModel):
    """Strict: wrong JSON types are refused (no "5" for 5), unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Limits(_Input):
    allowed_tiers: list[str] | None = None
    allowed_models: list[str] | None = None
    daily_budget_usd: Usd | None = None
    monthly_budget_usd: Usd | None = None
    rpm: Rate | None = None
    tpm: Rate | None = None

    @field_validator("allowed_tiers", "allowed_models")
    @classmethod
    def _allow_list(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        what = "tier" if info.field_name == "allowed_tiers" else "model"
        if not value:
            raise ValueError(f"an empty list would allow no {what}: omit it (or null) to allow every {what}, or "
                             "disable the principal")
        for item in value:
            if not item or _CONTROL.search(item) or len(item) > 200:
                raise ValueError(f"{what} names must be non-empty, printable and at most 200 characters")
        known = (info.context or {}).get(f"{what}s")
        if known is not None:
            unknown = sorted({x for x in value if x not in known})
            if unknown:
                raise ValueError(f"unknown {what}{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(repr(x) for x in unknown)} (configured: {', '.join(sorted(known))})")
        return sorted(set(value))


class _Attributes(_Limits):
    customer: str | None = None
    department: str | None = None
    project: str | None = None
    value_tier: str | None = None
    revenue_per_request_usd: Usd | None = None

    @field_validator("customer", "department", "project")
    @classmethod
    def _labels(cls, value: str | None) -> str | None:
        return _label(value)

    @field_validator("value_tier")
    @classmethod
    def _value_tier(cls, value: str | None) -> str | None:
        return None if value is None else _name(value, "value_tier")


class PrincipalSpec(_Attributes):
    """A new principal."""

    name: str
    disabled: bool = False

    @field_validator("name")
    @classmethod
    def _principal_name(cls, value: str) -> str:
        return _name(value, "name")


class PrincipalPatch(_Attributes):
    """Changes to a principal: the fields given are set (null clears one), the others are left alone."""

    disabled: bool | None = None

    def changes(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.model_fields_set}
        if "disabled" in out and out["disabled"] is None:
            raise InvalidInput("disabled: must be true or false", param="disabled")
        if not out:
            raise InvalidInput("nothing to update: give at least one field")
        return out


class KeySpec(_Limits):
    """A new key for ``principal``, with optional overrides (which may only narrow the principal's)."""

    principal: str
    name: str | None = None
    expires_at: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @field_validator("principal")
    @classmethod
    def _principal(cls, value: str) -> str:
        return _name(value, "principal")

    @field_validator("name")
    @classmethod
    def _key_name(cls, value: str | None) -> str | None:
        return None if value is None else _name(value, "name")


class RotateSpec(_Input):
    grace_s: Annotated[float, Field(ge=0, le=MAX_GRACE_S, allow_inf_nan=False)] = DEFAULT_GRACE_S


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any, *, tiers: Sequence[str] | None = None,
          models: Sequence[str] | None = None) -> M:
    """Validate ``data`` (a JSON object) as ``model``; allow lists are checked against ``tiers``/``models`` when
    given (the configured ones). Raises :class:`InvalidInput` naming every faulty field."""
    if not isinstance(data, dict):
        raise InvalidInput("expected a JSON object")
    context = {"tiers": set(tiers) if tiers is not None else None, "models": set(models) if models is not None else None}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidInput:
    parts: list[str] = []
    first: str | None = None
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        first = first or loc
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return InvalidInput("; ".join(parts), param=first)


# -- records --------------------------------------------------------------------------------------------------

P_COLUMNS = ("name", "customer", "department", "project", "value_tier", "allowed_tiers", "allowed_models",
             "daily_budget_usd", "monthly_budget_usd", "rpm", "tpm", "revenue_per_request_usd", "created_at",
             "updated_at", "disabled")
K_COLUMNS = ("id", "name", "principal", "hash", "prefix", "created_at", "expires_at", "revoked_at", "replaced_by",
             "allowed_tiers", "allowed_models", "daily_budget_usd", "monthly_budget_usd", "rpm", "tpm")
_LISTS = ("allowed_tiers", "allowed_models")


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    name: str
    customer: str | None = None
    department: str | None = None
    project: str | None = None
    value_tier: str | None = None
    allowed_tiers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    revenue_per_request_usd: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    disabled: bool = False

    def as_dict(self) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in P_COLUMNS}
        for c in _LISTS:
            out[c] = list(out[c]) if out[c] is not None else None
        return out


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored key. ``hash`` is never shown (:meth:`as_dict` leaves it out, ``repr`` too)."""

    id: str
    name: str | None
    principal: str
    prefix: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    replaced_by: str | None = None
    allowed_tiers: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    hash: str = field(default="", repr=False, compare=False)

    def status(self, now: float | None = None) -> str:
        """``revoked``, ``expired``, ``expiring`` (rotated or given an expiry, still valid) or ``active``."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if self.expires_at <= now else "expiring"
        return "active"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in K_COLUMNS if c != "hash"}
        for c in _LISTS:
            out[c] = list(out[c]) if out[c] is not None else None
        out["status"] = self.status(now)
        return out


def _decode_principal(row: Sequence[Any]) -> PrincipalRecord:
    d = dict(zip(P_COLUMNS, row, strict=True))
    for c in _LISTS:
        d[c] = tuple(orjson.loads(d[c])) if d[c] is not None else None
    d["disabled"] = bool(d["disabled"])
    return PrincipalRecord(**d)


def _decode_key(row: Sequence[Any]) -> KeyRecord:
    d = dict(zip(K_COLUMNS, row, strict=True))
    for c in _LISTS:
        d[c] = tuple(orjson.loads(d[c])) if d[c] is not None else None
    return KeyRecord(**d)


def _list_text(value: Sequence[str] | None) -> str | None:
    return None if value is None else orjson.dumps(list(value)).decode()


# -- the protocol ---------------------------------------------------------------------------------------------


@runtime_checkable
class GovernanceStore(Protocol):
    """Principals and keys. Every method is blocking I/O: call it from a thread (``asyncio.to_thread``), never
    on the event loop. Implementations are thread-safe."""

    def create_principal(self, spec: PrincipalSpec) -> PrincipalRecord: ...
    def get_principal(self, name: str) -> PrincipalRecord: ...
    def list_principals(self) -> list[PrincipalRecord]: ...
    def update_principal(self, name: str, patch: PrincipalPatch) -> PrincipalRecord: ...
    def delete_principal(self, name: str) -> int:
        """Delete the principal and its keys; returns how many keys went with it."""
        ...

    def create_key(self, spec: KeySpec) -> tuple[KeyRecord, str]:
        """The new key's record and the key itself (the only time it exists outside the caller's hands)."""
        ...

    def list_keys(self, principal: str | None = None) -> list[KeyRecord]: ...
    def get_key(self, key_id: str) -> KeyRecord: ...
    def rotate_key(self, key_id: str, grace_s: float = DEFAULT_GRACE_S) -> tuple[KeyRecord, str]:
        """A new key replacing ``key_id`` (same principal, name and overrides); the old one stays valid for
        ``grace_s`` more seconds. Returns the new record and key."""
        ...

    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke at once (idempotent)."""
        ...

    def lookup(self, key_hash: str) -> tuple[KeyRecord, PrincipalRecord] | None:
        """The key with this hash and its principal, whatever its status; None when there is none."""
        ...

    def generation(self) -> int:
        """A counter every write increases (cheap: to poll for changes)."""
        ...

    def snapshot(self) -> tuple[int, list[tuple[KeyRecord, PrincipalRecord]]]:
        """The generation and every key that is neither revoked nor expired, with its principal (one read)."""
        ...

    def close(self) -> None: ...
