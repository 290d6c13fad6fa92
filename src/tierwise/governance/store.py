"""Where principals and their keys live: a small :class:`GovernanceStore` protocol, SQLite and PostgreSQL.

A **principal** is who spend is attributed to and what rules apply to: customer, department, project, value tier,
allowed tiers and models, daily/monthly budgets, requests and tokens per minute, revenue per request, and a
``disabled`` switch. A **key** belongs to one principal; the store keeps its SHA-256 hash (never the key, see
:mod:`tierwise.governance.keys`), a display prefix, an optional unique name, its expiry and revocation times, and
optional per-key overrides of the allow lists and limits (a key narrows its principal, never widens it: see
:func:`tierwise.governance.auth.resolve`).

Every input is validated here, in one place (:func:`parse` with the pydantic models below), whoever calls: the
admin API, the CLI or code. Failures are :class:`GovernanceError` subclasses carrying the HTTP status the admin API
answers with: :class:`InvalidInput` (400, naming the field), :class:`NotFound` (404), :class:`Conflict` (409),
:class:`GovernanceStoreError` (503: the store cannot be reached or written; its message never holds a key, a hash
or a DSN password).

Backends:

- :class:`SQLiteGovernanceStore`: its own file (``governance.path``, default ``tierwise-governance.db``), WAL,
  schema versioned with ``PRAGMA user_version`` and stamped ``PRAGMA application_id`` ("TWGV") as the ledger file
  is, so a newer or foreign file is refused instead of written into.
- :class:`PostgresGovernanceStore`: tables ``tierwise_gov_principals``, ``tierwise_gov_keys`` and
  ``tierwise_gov_meta`` in ``governance.pg_schema`` (default: the ledger's schema), version ``governance`` in the
  ``tierwise_schema_versions`` table the ledger also uses; created under the same advisory lock as the ledger's
  schema so replicas (and the ledger) starting together never race on ``CREATE SCHEMA``/``CREATE TABLE``.

Each write bumps a **generation** counter in the same transaction, so a gateway polling every ``refresh_s`` reloads
its key map only when something changed (:meth:`GovernanceStore.generation`).

Times are unix seconds (floats), as in the ledger. Deleting a principal deletes its keys; the ledger keeps the key
ids its records name.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar, runtime_checkable

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tierwise.governance.keys import new_key, new_key_id

if TYPE_CHECKING:
    from tierwise.config.schema import TierwiseConfig

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


# -- the SQL both backends share -------------------------------------------------------------------------------

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


class _SQLStore:
    """The operations, written once over ``_run(write, fn)``: ``fn(q)`` runs in one transaction, where
    ``q(sql, args)`` executes a statement (``?`` placeholders; ``{P}``, ``{K}``, ``{M}`` are the principals, keys
    and meta tables) and returns its rows."""

    _P = _K = _M = ""

    def _run(self, write: bool, fn: Callable[[Query], T]) -> T:  # pragma: no cover - per backend
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text.format(P=self._P, K=self._K, M=self._M)

    # principals

    def _principal(self, q: Query, name: str, param: str | None = None) -> PrincipalRecord:
        rows = q(f"SELECT {', '.join(P_COLUMNS)} FROM {{P}} WHERE name = ?", (name,))
        if not rows:
            raise NotFound(f"no principal named {name!r}", param=param)
        return _decode_principal(rows[0])

    @staticmethod
    def _bump(q: Query) -> None:
        q("UPDATE {M} SET generation = generation + 1 WHERE id = 1", ())

    def create_principal(self, spec: PrincipalSpec) -> PrincipalRecord:
        now = time.time()
        rec = PrincipalRecord(
            name=spec.name, customer=spec.customer, department=spec.department, project=spec.project,
            value_tier=spec.value_tier,
            allowed_tiers=tuple(spec.allowed_tiers) if spec.allowed_tiers is not None else None,
            allowed_models=tuple(spec.allowed_models) if spec.allowed_models is not None else None,
            daily_budget_usd=spec.daily_budget_usd, monthly_budget_usd=spec.monthly_budget_usd, rpm=spec.rpm,
            tpm=spec.tpm, revenue_per_request_usd=spec.revenue_per_request_usd, created_at=now, updated_at=now,
            disabled=spec.disabled)

        def fn(q: Query) -> PrincipalRecord:
            if q("SELECT 1 FROM {P} WHERE name = ?", (spec.name,)):
                raise Conflict(f"a principal named {spec.name!r} already exists", param="name")
            self._insert_principal(q, rec)
            self._bump(q)
            return rec

        return self._run(True, fn)

    def _insert_principal(self, q: Query, rec: PrincipalRecord) -> None:
        values = [getattr(rec, c) for c in P_COLUMNS]
        for i, c in enumerate(P_COLUMNS):
            if c in _LISTS:
                values[i] = _list_text(values[i])
        values[P_COLUMNS.index("disabled")] = self._bool(rec.disabled)
        q(f"INSERT INTO {{P}} ({', '.join(P_COLUMNS)}) VALUES ({', '.join('?' * len(P_COLUMNS))})", values)

    def _bool(self, value: bool) -> Any:
        return value

    def get_principal(self, name: str) -> PrincipalRecord:
        return self._run(False, lambda q: self._principal(q, name))

    def list_principals(self) -> list[PrincipalRecord]:
        rows = self._run(False, lambda q: q(f"SELECT {', '.join(P_COLUMNS)} FROM {{P}} ORDER BY name", ()))
        return [_decode_principal(r) for r in rows]

    def update_principal(self, name: str, patch: PrincipalPatch) -> PrincipalRecord:
        changes = patch.changes()

        def fn(q: Query) -> PrincipalRecord:
            old = self._principal(q, name)
            merged = old.as_dict()
            merged.update(changes)
            merged["updated_at"] = max(time.time(), old.updated_at)
            for c in _LISTS:
                merged[c] = tuple(merged[c]) if merged[c] is not None else None
            rec = PrincipalRecord(**merged)
            sets = [c for c in P_COLUMNS if c not in ("name", "created_at")]
            values = [getattr(rec, c) for c in sets]
            for i, c in enumerate(sets):
                if c in _LISTS:
                    values[i] = _list_text(values[i])
                elif c == "disabled":
                    values[i] = self._bool(rec.disabled)
            q(f"UPDATE {{P}} SET {', '.join(f'{c} = ?' for c in sets)} WHERE name = ?", [*values, name])
            self._bump(q)
            return rec

        return self._run(True, fn)

    def delete_principal(self, name: str) -> int:
        def fn(q: Query) -> int:
            self._principal(q, name)
            n = len(q("SELECT id FROM {K} WHERE principal = ?", (name,)))
            q("DELETE FROM {K} WHERE principal = ?", (name,))
            q("DELETE FROM {P} WHERE name = ?", (name,))
            self._bump(q)
            return n

        return self._run(True, fn)

    # keys

    def _key(self, q: Query, key_id: str) -> KeyRecord:
        rows = q(f"SELECT {', '.join(K_COLUMNS)} FROM {{K}} WHERE id = ?", (key_id,))
        if not rows:
            raise NotFound(f"no key with id {key_id!r}")
        return _decode_key(rows[0])

    def _insert_key(self, q: Query, rec: KeyRecord) -> None:
        values = [getattr(rec, c) for c in K_COLUMNS]
        for i, c in enumerate(K_COLUMNS):
            if c in _LISTS:
                values[i] = _list_text(values[i])
        q(f"INSERT INTO {{K}} ({', '.join(K_COLUMNS)}) VALUES ({', '.join('?' * len(K_COLUMNS))})", values)

    def create_key(self, spec: KeySpec) -> tuple[KeyRecord, str]:
        now = time.time()
        if spec.expires_at is not None and spec.expires_at <= now:
            raise InvalidInput("expires_at: must be in the future", param="expires_at")
        secret, digest, prefix = new_key()
        rec = KeyRecord(
            id=new_key_id(), name=spec.name, principal=spec.principal, prefix=prefix, created_at=now,
            expires_at=spec.expires_at,
            allowed_tiers=tuple(spec.allowed_tiers) if spec.allowed_tiers is not None else None,
            allowed_models=tuple(spec.allowed_models) if spec.allowed_models is not None else None,
            daily_budget_usd=spec.daily_budget_usd, monthly_budget_usd=spec.monthly_budget_usd, rpm=spec.rpm,
            tpm=spec.tpm, hash=digest)

        def fn(q: Query) -> KeyRecord:
            p = self._principal(q, spec.principal, param="principal")
            for c in _LISTS:
                mine, theirs = getattr(rec, c), getattr(p, c)
                if mine is not None and theirs is not None and not set(mine) <= set(theirs):
                    extra = ", ".join(sorted(set(mine) - set(theirs)))
                    raise InvalidInput(f"{c}: a key may only narrow its principal's list; {extra} not allowed for "
                                       f"principal {p.name!r}", param=c)
            if spec.name is not None and q("SELECT 1 FROM {K} WHERE name = ?", (spec.name,)):
                raise Conflict(f"a key named {spec.name!r} already exists", param="name")
            self._insert_key(q, rec)
            self._bump(q)
            return rec

        return self._run(True, fn), secret

    def list_keys(self, principal: str | None = None) -> list[KeyRecord]:
        cols = ", ".join(K_COLUMNS)

        def fn(q: Query) -> list[tuple[Any, ...]]:
            if principal is None:
                return q(f"SELECT {cols} FROM {{K}} ORDER BY created_at, id", ())
            self._principal(q, principal, param="principal")
            return q(f"SELECT {cols} FROM {{K}} WHERE principal = ? ORDER BY created_at, id", (principal,))

        return [_decode_key(r) for r in self._run(False, fn)]

    def get_key(self, key_id: str) -> KeyRecord:
        return self._run(False, lambda q: self._key(q, key_id))

    def rotate_key(self, key_id: str, grace_s: float = DEFAULT_GRACE_S) -> tuple[KeyRecord, str]:
        if not (0 <= grace_s <= MAX_GRACE_S) or math.isnan(grace_s):
            raise InvalidInput(f"grace_s: must be between 0 and {MAX_GRACE_S:.0f} seconds", param="grace_s")
        secret, digest, prefix = new_key()
        new_id = new_key_id()

        def fn(q: Query) -> KeyRecord:
            now = time.time()
            old = self._key(q, key_id)
            if old.revoked_at is not None:
                raise Conflict(f"key {key_id} is revoked; create a new key instead")
            if old.replaced_by is not None:
                raise Conflict(f"key {key_id} was already rotated (to {old.replaced_by}); rotate that one instead")
            if old.expires_at is not None and old.expires_at <= now:
                raise Conflict(f"key {key_id} has expired; create a new key instead")
            expires = now + grace_s if old.expires_at is None else min(old.expires_at, now + grace_s)
            q("UPDATE {K} SET name = NULL, expires_at = ?, replaced_by = ? WHERE id = ?", (expires, new_id, key_id))
            rec = KeyRecord(
                id=new_id, name=old.name, principal=old.principal, prefix=prefix, created_at=now,
                allowed_tiers=old.allowed_tiers, allowed_models=old.allowed_models,
                daily_budget_usd=old.daily_budget_usd, monthly_budget_usd=old.monthly_budget_usd, rpm=old.rpm,
                tpm=old.tpm, hash=digest)
            self._insert_key(q, rec)
            self._bump(q)
            return rec

        return self._run(True, fn), secret

    def revoke_key(self, key_id: str) -> KeyRecord:
        def fn(q: Query) -> KeyRecord:
            old = self._key(q, key_id)
            if old.revoked_at is not None:
                return old
            q("UPDATE {K} SET revoked_at = ? WHERE id = ?", (time.time(), key_id))
            self._bump(q)
            return self._key(q, key_id)

        return self._run(True, fn)

    _JOINED = ", ".join([*(f"k.{c}" for c in K_COLUMNS), *(f"p.{c}" for c in P_COLUMNS)])

    @staticmethod
    def _pair(row: Sequence[Any]) -> tuple[KeyRecord, PrincipalRecord]:
        n = len(K_COLUMNS)
        return _decode_key(row[:n]), _decode_principal(row[n:])

    def lookup(self, key_hash: str) -> tuple[KeyRecord, PrincipalRecord] | None:
        rows = self._run(False, lambda q: q(
            f"SELECT {self._JOINED} FROM {{K}} k JOIN {{P}} p ON p.name = k.principal WHERE k.hash = ?", (key_hash,)))
        return self._pair(rows[0]) if rows else None

    def generation(self) -> int:
        rows = self._run(False, lambda q: q("SELECT generation FROM {M} WHERE id = 1", ()))
        return int(rows[0][0]) if rows else 0

    def snapshot(self) -> tuple[int, list[tuple[KeyRecord, PrincipalRecord]]]:
        now = time.time()

        def fn(q: Query) -> tuple[int, list[tuple[Any, ...]]]:
            gen = q("SELECT generation FROM {M} WHERE id = 1", ())
            rows = q(f"SELECT {self._JOINED} FROM {{K}} k JOIN {{P}} p ON p.name = k.principal "
                     "WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)", (now,))
            return (int(gen[0][0]) if gen else 0), rows

        gen, rows = self._run(False, fn)
        return gen, [self._pair(r) for r in rows]


# -- SQLite ---------------------------------------------------------------------------------------------------

SQLITE_SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a tierwise governance file ("TWGV").
APPLICATION_ID = 0x54574756
_SQLITE_MIGRATIONS: dict[int, tuple[str, ...]] = {}  # version N -> N+1; version 1 is the first layout
_SQLITE_CREATE = (
    "CREATE TABLE principals (name TEXT PRIMARY KEY, customer TEXT, department TEXT, project TEXT, value_tier TEXT, "
    "allowed_tiers TEXT, allowed_models TEXT, daily_budget_usd REAL, monthly_budget_usd REAL, rpm INTEGER, "
    "tpm INTEGER, revenue_per_request_usd REAL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
    "disabled INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT UNIQUE, principal TEXT NOT NULL REFERENCES principals(name), "
    "hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, "
    "replaced_by TEXT, allowed_tiers TEXT, allowed_models TEXT, daily_budget_usd REAL, monthly_budget_usd REAL, "
    "rpm INTEGER, tpm INTEGER)",
    "CREATE INDEX keys_principal ON keys (principal)",
    "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)",
    "INSERT INTO meta (id, generation) VALUES (1, 0)",
)


class SQLiteGovernanceStore(_SQLStore):
    """Principals and keys in their own SQLite file (WAL). One connection, serialised by a lock: governance
    traffic is a refresh every few seconds, rare lookups and admin calls."""

    _P, _K, _M = "principals", "keys", "meta"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise ValueError("SQLiteGovernanceStore needs a file path")
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise GovernanceStoreError(f"cannot open the governance store {self.path}: {_sqlite_why(exc)}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._ensure_schema(conn)
            conn.execute("PRAGMA journal_mode=WAL")
        except GovernanceError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise GovernanceStoreError(f"cannot open the governance store {self.path}: {_sqlite_why(exc)}") from None
        self._conn = conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            if app_id not in (0, APPLICATION_ID):
                raise GovernanceStoreError(f"{self.path} is an SQLite file of another application, not a tierwise "
                                           "governance store; point governance.path at another file")
            if version > SQLITE_SCHEMA_VERSION:
                raise GovernanceStoreError(
                    f"governance store {self.path} has schema version {version}, but this tierwise only knows up to "
                    f"{SQLITE_SCHEMA_VERSION}: upgrade tierwise")
            if version == 0:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone() is not None:
                    raise GovernanceStoreError(f"{self.path} has tables tierwise did not create; point "
                                               "governance.path at another file")
                for stmt in _SQLITE_CREATE:
                    conn.execute(stmt)
            else:
                for v in range(version, SQLITE_SCHEMA_VERSION):
                    for stmt in _SQLITE_MIGRATIONS[v]:
                        conn.execute(stmt)
            if version != SQLITE_SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SQLITE_SCHEMA_VERSION}")
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _bool(self, value: bool) -> Any:
        return int(value)

    def _run(self, write: bool, fn: Callable[[Query], T]) -> T:
        with self._lock:
            if self._closed:
                raise GovernanceStoreError(f"governance store {self.path} is closed")
            conn = self._conn

            def q(text: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
                return conn.execute(self._sql(text), tuple(args)).fetchall()

            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(q)
                conn.execute("COMMIT")
                return result
            except BaseException as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict("already exists (a concurrent change made the same name)") from None
                if isinstance(exc, sqlite3.Error):
                    raise GovernanceStoreError(
                        f"governance store {self.path}: {_sqlite_why(exc)}") from None
                raise

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def __repr__(self) -> str:
        return f"SQLiteGovernanceStore({str(self.path)!r})"


def _sqlite_why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"


# -- PostgreSQL -----------------------------------------------------------------------------------------------

PG_SCHEMA_VERSION = 1
PG_COMPONENT = "governance"
PG_PRINCIPALS, PG_KEYS, PG_META = "tierwise_gov_principals", "tierwise_gov_keys", "tierwise_gov_meta"
_PG_MIGRATIONS: dict[int, tuple[str, ...]] = {}  # version N -> N+1 ({P}, {K}, {M} placeholders)


def schema_lock_key(schema: str) -> int:
    """The advisory lock the PostgreSQL ledger takes around its DDL in ``schema``
    (``tierwise.ledger.postgres._lock_key("ledger.schema", schema)``, same derivation): taking the same one means
    the ledger and the governance store never create the schema or the versions table at the same time."""
    digest = hashlib.blake2b(f"tierwise.ledger.schema:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _describe(exc: BaseException, secret: str | None = None) -> str:
    """A psycopg error in words that cannot leak a value or a password (as the PostgreSQL ledger describes its
    own): data errors (SQLSTATE class 22) quote values, so they keep only their class and SQLSTATE; other server
    errors keep their primary message (object names); client-side errors keep their class, connection errors
    their text; the DSN's password is masked in any case."""
    name = type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    if state is not None:
        diag = getattr(exc, "diag", None)
        primary = (getattr(diag, "message_primary", None) or "") if diag is not None else ""
        text = f"{name} (SQLSTATE {state})" if state.startswith("22") or not primary else (
            f"{primary} ({name}, SQLSTATE {state})")
    elif name in ("OperationalError", "InterfaceError"):
        text = f"{name}: {str(exc).strip()}"
    else:
        text = name
    text = " ".join(text.split())[:300]
    if secret:
        text = text.replace(secret, "***")
    return text


class PostgresGovernanceStore(_SQLStore):
    """Principals and keys in PostgreSQL (psycopg 3), shared by every replica; see the module docstring.

    One connection, serialised by a lock, opened again after it is lost; a read (and a write whose first
    statement failed because the connection was gone, so nothing was sent) is retried once on a fresh one.
    ``statement_timeout`` bounds every statement. Errors never hold a key, a hash or the DSN's password.
    """

    def __init__(self, dsn: str, *, schema: str = "tierwise", statement_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
            from psycopg import sql
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise GovernanceStoreError("governance on PostgreSQL needs psycopg 3: pip install 'tierwise[postgres]'") \
                from None
        self._psycopg = psycopg
        if not dsn or not dsn.strip():
            raise GovernanceStoreError("the PostgreSQL governance store needs a DSN (governance.dsn or ledger.dsn)")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            raise GovernanceStoreError("governance.dsn is not a valid PostgreSQL connection string or URI") from None
        self._dsn = dsn
        self._secret = str(params.get("password") or "") or None
        self.where = " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)) \
            or "(libpq defaults)"
        self.schema = schema
        self._kwargs: dict[str, Any] = {}
        if "application_name" not in params:
            self._kwargs["application_name"] = "tierwise-governance"
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = 10
        self._timeout_ms = int(statement_timeout_s * 1000)
        self._schema_lock = schema_lock_key(schema)  # the ledger's DDL lock: one DDL at a time per schema
        self._lock = threading.Lock()
        self._closed = False
        ident = sql.Identifier
        self._conn: Any = None
        conn = self._connect()
        try:
            self._P = sql.SQL("{}.{}").format(ident(schema), ident(PG_PRINCIPALS)).as_string(conn)
            self._K = sql.SQL("{}.{}").format(ident(schema), ident(PG_KEYS)).as_string(conn)
            self._M = sql.SQL("{}.{}").format(ident(schema), ident(PG_META)).as_string(conn)
            self._versions = sql.SQL("{}.{}").format(ident(schema), ident("tierwise_schema_versions")).as_string(conn)
            self._schema_ident = ident(schema).as_string(conn)
            self._ensure_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _error(self, doing: str, exc: BaseException) -> GovernanceStoreError:
        return GovernanceStoreError(
            f"PostgreSQL governance store {self.schema} ({self.where}): {doing}: {_describe(exc, self._secret)}")

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, **self._kwargs)
        except psycopg.Error as exc:
            raise GovernanceStoreError(f"cannot connect to the PostgreSQL governance store ({self.where}): "
                                       f"{_describe(exc, self._secret)}") from None
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false), "
                         "set_config('idle_in_transaction_session_timeout', %s, false)",
                         (f"{self._timeout_ms}ms", f"{self._timeout_ms * 3}ms"))
        except psycopg.Error as exc:
            conn.close()
            raise self._error("cannot set up a connection", exc) from None
        return conn

    def _ensure_schema(self, conn: Any) -> None:
        psycopg = self._psycopg
        try:
            with conn.transaction():
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._schema_lock,))
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                    conn.execute(f"CREATE SCHEMA {self._schema_ident}")
                # the same layout the ledger creates (tierwise.ledger.postgres), whoever comes first
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self._versions} (component text PRIMARY KEY, version "
                             "integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
                got = conn.execute(f"SELECT version FROM {self._versions} WHERE component = %s",
                                   (PG_COMPONENT,)).fetchone()
                version = int(got[0]) if got else 0
                if version > PG_SCHEMA_VERSION:
                    raise GovernanceStoreError(
                        f"the PostgreSQL governance store in schema {self.schema} ({self.where}) has schema version "
                        f"{version}, but this tierwise only knows up to {PG_SCHEMA_VERSION}: upgrade tierwise")
                if version == 0:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
                        "AND c.relname = ANY(%s)", (self.schema, [PG_PRINCIPALS, PG_KEYS, PG_META])).fetchone()
                    if exists:
                        raise GovernanceStoreError(
                            f"schema {self.schema} ({self.where}) has governance tables tierwise did not create; set "
                            "governance.pg_schema to another schema")
                    for stmt in self._create_statements():
                        conn.execute(stmt)
                else:
                    for v in range(version, PG_SCHEMA_VERSION):
                        for stmt in _PG_MIGRATIONS[v]:
                            conn.execute(self._sql(stmt))
                if version != PG_SCHEMA_VERSION:
                    conn.execute(f"INSERT INTO {self._versions} (component, version) VALUES (%s, %s) ON CONFLICT "
                                 "(component) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
                                 (PG_COMPONENT, PG_SCHEMA_VERSION))
        except psycopg.Error as exc:
            raise self._error("cannot create or check the governance tables", exc) from None

    def _create_statements(self) -> list[str]:
        return [self._sql(s) for s in (
            "CREATE TABLE {P} (name text PRIMARY KEY, customer text, department text, project text, value_tier text, "
            "allowed_tiers text, allowed_models text, daily_budget_usd double precision, monthly_budget_usd double "
            "precision, rpm bigint, tpm bigint, revenue_per_request_usd double precision, created_at double precision "
            "NOT NULL, updated_at double precision NOT NULL, disabled boolean NOT NULL DEFAULT false)",
            "CREATE TABLE {K} (id text PRIMARY KEY, name text UNIQUE, principal text NOT NULL REFERENCES {P} (name), "
            "hash text NOT NULL UNIQUE, prefix text NOT NULL, created_at double precision NOT NULL, expires_at double "
            "precision, revoked_at double precision, replaced_by text, allowed_tiers text, allowed_models text, "
            "daily_budget_usd double precision, monthly_budget_usd double precision, rpm bigint, tpm bigint)",
            f"CREATE INDEX {PG_KEYS}_principal ON {{K}} (principal)",
            "CREATE TABLE {M} (id integer PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL)",
            "INSERT INTO {M} (id, generation) VALUES (1, 0)",
            "COMMENT ON TABLE {K} IS 'tierwise API keys: SHA-256 hashes only (tierwise.governance.store)'",
        )]

    def _usable(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return conn is not None and not conn.closed and not conn.broken \
            and conn.info.transaction_status == TransactionStatus.IDLE

    def _run(self, write: bool, fn: Callable[[Query], T]) -> T:
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise GovernanceStoreError(f"governance store {self!r} is closed")
            for attempt in (1, 2):
                if not self._usable(self._conn):
                    if self._conn is not None:
                        with contextlib.suppress(Exception):
                            self._conn.close()
                    self._conn = None
                    self._conn = self._connect()
                conn = self._conn
                sent = 0

                def q(text: str, args: Sequence[Any], conn: Any = conn) -> list[tuple[Any, ...]]:
                    nonlocal sent
                    cur = conn.execute(self._sql(text).replace("?", "%s"), tuple(args))
                    sent += 1
                    return cur.fetchall() if cur.description is not None else []

                try:
                    with conn.transaction():
                        return fn(q)
                except GovernanceError:
                    raise
                except psycopg.errors.UniqueViolation:
                    raise Conflict("already exists (a concurrent change made the same name)") from None
                except psycopg.errors.ForeignKeyViolation:
                    raise NotFound("the principal was deleted meanwhile", param="principal") from None
                except psycopg.OperationalError as exc:
                    # a lost connection: reads again on a fresh one; writes only when nothing reached the server
                    if attempt == 2 or self._usable(conn) or (write and sent > 0):
                        raise self._error("write failed" if write else "read failed", exc) from None
                except psycopg.Error as exc:
                    raise self._error("write failed" if write else "read failed", exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None

    def __repr__(self) -> str:
        return f"PostgresGovernanceStore({self.where!r}, schema={self.schema!r})"


# -- from the configuration -----------------------------------------------------------------------------------


def governance_backend(cfg: TierwiseConfig) -> str:
    """``governance.backend``, or its default: postgres when governance.dsn is set or the ledger is on PostgreSQL."""
    g = cfg.governance
    if g.backend is not None:
        return g.backend
    return "postgres" if g.dsn or cfg.ledger.backend == "postgres" else "sqlite"


def _pg_target(cfg: TierwiseConfig) -> tuple[str | None, str]:
    g = cfg.governance
    return (g.dsn or cfg.ledger.dsn), (g.pg_schema or cfg.ledger.pg_schema)


def open_governance_store(cfg: TierwiseConfig) -> GovernanceStore:
    """The store the configuration names (blocking I/O: call it off the event loop)."""
    if governance_backend(cfg) == "postgres":
        dsn, schema = _pg_target(cfg)
        if not dsn:
            raise GovernanceStoreError("governance on PostgreSQL needs governance.dsn (or ledger.dsn)")
        return PostgresGovernanceStore(dsn, schema=schema)
    return SQLiteGovernanceStore(cfg.governance.path)


def store_problem(cfg: TierwiseConfig) -> tuple[str, str] | None:
    """Why the configured governance store could not be opened, as (config path, message), or None. Changes
    nothing: no file is created, no table (for ``check-config`` and ``serve``'s start-up checks)."""
    if governance_backend(cfg) == "postgres":
        dsn, _ = _pg_target(cfg)
        if not dsn:
            return "governance.dsn", "governance on PostgreSQL needs governance.dsn (or ledger.dsn)"
        try:
            import psycopg
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            return "governance.backend", "governance on PostgreSQL needs psycopg 3: pip install 'tierwise[postgres]'"
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            return "governance.dsn", "not a valid PostgreSQL connection string or URI"
        where = " ".join(f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k))
        try:
            with psycopg.connect(dsn, connect_timeout=int(params.get("connect_timeout") or 5)) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            secret = str(params.get("password") or "") or None
            return ("governance.dsn" if cfg.governance.dsn else "ledger.dsn",
                    f"cannot connect to the PostgreSQL governance store ({where or 'libpq defaults'}): "
                    f"{_describe(exc, secret)}")
        return None
    return _sqlite_problem(Path(cfg.governance.path).expanduser())


def _sqlite_problem(path: Path) -> tuple[str, str] | None:
    from tierwise.gateway.startup import _creatable

    fix = "point governance.path at a file in a writable directory"
    if path.is_dir():
        return "governance.path", f"{path} is a directory, not a file; {fix}"
    if problem := _creatable(path, f"the governance store {path} (and its WAL)"):
        return "governance.path", f"{problem}; {fix}"
    if not path.exists():
        return None
    try:
        with open(path, "r+b") as f:
            head = f.read(100)
    except OSError as exc:
        return "governance.path", f"cannot open {path} for writing ({exc.strerror}); {fix}"
    if not head:
        return None
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        return "governance.path", f"{path} is not a tierwise governance store (not an SQLite database); {fix}"
    version = int.from_bytes(head[60:64], "big", signed=True)
    app_id = int.from_bytes(head[68:72], "big", signed=True)
    if app_id != APPLICATION_ID and (app_id != 0 or version != 0):
        return "governance.path", f"{path} is an SQLite file of another application (or a ledger); {fix}"
    if version > SQLITE_SCHEMA_VERSION:
        return "governance.path", (f"{path} has schema version {version}, but this tierwise only knows up to "
                                   f"{SQLITE_SCHEMA_VERSION}: upgrade tierwise")
    return None

