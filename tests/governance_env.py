"""The governance store under test, SQLite or PostgreSQL: fixtures and helpers shared by the governance tests.

``gov`` is parametrised over both backends. The PostgreSQL one gets a fresh schema per test (dropped afterwards) on
``TIERWISE_TEST_PG_DSN`` (default: the local server, trust auth, database ``test``); when the server is unreachable
or psycopg is missing it skips with the reason, which ``TIERWISE_NO_SKIPS=1`` (CI) turns into a failed run.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import config_for
from tierwise.config import TierwiseConfig, load_config_text
from tierwise.governance.store import (
    GovernanceStore,
    KeySpec,
    PostgresGovernanceStore,
    PrincipalSpec,
    SQLiteGovernanceStore,
    parse,
)

BASE_DSN = os.environ.get("TIERWISE_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
ADMIN_KEY = "test-admin-key-0123456789abcdef"


def _pg_unreachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed: pip install -e '.[test]'"
    try:
        with psycopg.connect(BASE_DSN, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {BASE_DSN} ({type(exc).__name__}); start it or set TIERWISE_TEST_PG_DSN"


@dataclass
class GovEnv:
    backend: str
    tmp: Path
    schema: str | None = None

    @property
    def fields(self) -> str:
        """The governance: fields (inside a flow mapping) that point at this store."""
        if self.backend == "sqlite":
            return f'backend: sqlite, path: "{self.tmp / "governance.db"}"'
        return f'backend: postgres, dsn: "{BASE_DSN}", pg_schema: {self.schema}'

    def store(self) -> GovernanceStore:
        if self.backend == "sqlite":
            return SQLiteGovernanceStore(self.tmp / "governance.db")
        return PostgresGovernanceStore(BASE_DSN, schema=self.schema or "")

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``principals`` or ``keys``, read straight from the database."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.tmp / "governance.db")
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]
            finally:
                conn.close()
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(BASE_DSN, autocommit=True, row_factory=dict_row) as conn:
            return list(conn.execute(f'SELECT * FROM "{self.schema}".tierwise_gov_{table}').fetchall())

    def raw_bytes(self) -> bytes:
        """Everything stored, as bytes: the SQLite files (database, WAL) or a text dump of the PostgreSQL tables."""
        if self.backend == "sqlite":
            return b"".join(p.read_bytes() for p in self.tmp.glob("governance.db*"))
        return repr([self.rows("principals"), self.rows("keys")]).encode()


@pytest.fixture(name="gov", params=["sqlite", "postgres"])
def gov_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GovEnv]:
    if request.param == "sqlite":
        yield GovEnv("sqlite", tmp_path)
        return
    down = _pg_unreachable()
    if down:
        pytest.skip(down)
    import psycopg

    env = GovEnv("postgres", tmp_path, f"tw_gov_{uuid.uuid4().hex[:12]}")
    try:
        yield env
    finally:
        with psycopg.connect(BASE_DSN, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                         "'tierwise-governance' AND query ILIKE %s", (f"%{env.schema}%",))
            conn.execute(f'DROP SCHEMA IF EXISTS "{env.schema}" CASCADE')


def gateway_config(upstream_url: str, tmp: Path, gov: GovEnv, keys: str = "required", refresh_s: float = 0.2,
                   extra: str = "", ledger: str | None = None) -> TierwiseConfig:
    """The harness's test config with virtual keys on this store (and its own ledger file ``ledger``)."""
    cfg = config_for(upstream_url, tmp, extra=f"governance: {{keys: {keys}, refresh_s: {refresh_s}, {gov.fields}}}\n"
                     + extra)
    if ledger is not None:
        cfg.ledger.path = str(tmp / ledger)
    return cfg


def config_text(gov: GovEnv, port: int = 8080, extra: str = "", upstream: str = "http://127.0.0.1:9/v1",
                keys: str = "required", ledger: Path | None = None) -> str:
    """A whole tierwise.yaml (for subprocesses) on this store."""
    return f"""
server: {{port: {port}}}
ledger: {{path: "{ledger or gov.tmp / 'ledger.db'}", flush_interval_ms: 20}}
governance: {{keys: {keys}, refresh_s: 0.2, {gov.fields}}}
{extra}providers:
  fake: {{format: openai, base_url: "{upstream}", api_key: sk-test-upstream-secret, timeout_s: 5}}
models:
  small: {{provider: fake, upstream: small-up, price: {{input: 0.1, output: 0.4}}}}
  large: {{provider: fake, upstream: large-up, price: {{input: 2.5, output: 10}}}}
tiers:
  label: {{models: [small]}}
  chat: {{models: [large, small]}}
default_tier: chat
fallback_model: small
"""


def make_key(store: GovernanceStore, principal: str = "acme", *, key_fields: dict[str, Any] | None = None,
             **principal_fields: Any) -> tuple[str, str]:
    """(key id, key) of a new key for ``principal`` (created when missing, with ``principal_fields``)."""
    from tierwise.governance.store import NotFound

    try:
        store.get_principal(principal)
    except NotFound:
        store.create_principal(parse(PrincipalSpec, {"name": principal, **principal_fields}))
    rec, secret = store.create_key(parse(KeySpec, {"principal": principal, **(key_fields or {})}))
    return rec.id, secret


def load(text: str) -> TierwiseConfig:
    return load_config_text(text, env={})
