"""The store operations both SQL backends share, written once over a transaction runner."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from tierwise.governance.keys import new_key, new_key_id
from tierwise.governance.records import (
    _LISTS,
    DEFAULT_GRACE_S,
    K_COLUMNS,
    MAX_GRACE_S,
    P_COLUMNS,
    Conflict,
    InvalidInput,
    KeyRecord,
    KeySpec,
    NotFound,
    PrincipalPatch,
    PrincipalRecord,
    PrincipalSpec,
    T,
    _decode_key,
    _decode_principal,
    _list_text,
)

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
