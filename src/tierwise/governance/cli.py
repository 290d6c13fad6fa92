"""``tierwise keys …`` and ``tierwise principals …``: manage virtual keys and principals from a shell.

Every verb takes ``--config FILE`` and works on the store it configures (``governance:``; SQLite file or
PostgreSQL alike). Operators script these, so the interfaces below are stable::

    tierwise keys create --principal NAME [--name KEYNAME] [--customer C] [--department D] [--project P]
                         [--value-tier V] [--tier-access T,…] [--models M,…] [--daily-budget-usd X]
                         [--monthly-budget-usd Y] [--rpm N] [--tpm N] [--revenue-per-request-usd R]
                         [--expires-at TIME] [--json]          → {"id": …, "key": …, …}: the key, only this once
    tierwise keys list [--principal NAME] [--json]
    tierwise keys show ID [--json]
    tierwise keys rotate ID [--grace-s S] [--json]            → the new key, once; the old one works S more seconds
    tierwise keys revoke ID [--json]
    tierwise principals create NAME [flags as above] [--disabled] [--json]
    tierwise principals list [--json] | show NAME [--json] | update NAME [flags] [--disable|--enable] [--json]
    tierwise principals delete NAME [--json]

``keys create`` creates the principal when it does not exist, with the flags given. When it exists, the limit
flags (``--tier-access``, ``--models``, budgets, ``--rpm``, ``--tpm``) become this key's own overrides (a key may
only narrow its principal), and the attribute flags (``--customer``, ``--department``, ``--project``,
``--value-tier``, ``--revenue-per-request-usd``) must agree with the principal's (change those with ``principals
update``). In ``principals update`` an empty value clears a field (``--rpm ''``); for the allow lists ``''`` or
``'*'`` means every tier/model.

Errors (bad flags, validation, unknown principal or key, duplicate names, store unreachable) are one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from tierwise.governance.store import (
    DEFAULT_GRACE_S,
    Conflict,
    GovernanceError,
    GovernanceStore,
    InvalidInput,
    KeyRecord,
    KeySpec,
    NotFound,
    PrincipalPatch,
    PrincipalRecord,
    PrincipalSpec,
    RotateSpec,
    open_governance_store,
    parse,
)

#: flag -> (field, kind); kind: str | float | int | list
_FLAGS: dict[str, tuple[str, str]] = {
    "--customer": ("customer", "str"),
    "--department": ("department", "str"),
    "--project": ("project", "str"),
    "--value-tier": ("value_tier", "str"),
    "--tier-access": ("allowed_tiers", "list"),
    "--models": ("allowed_models", "list"),
    "--daily-budget-usd": ("daily_budget_usd", "float"),
    "--monthly-budget-usd": ("monthly_budget_usd", "float"),
    "--rpm": ("rpm", "int"),
    "--tpm": ("tpm", "int"),
    "--revenue-per-request-usd": ("revenue_per_request_usd", "float"),
}
_ATTRIBUTES = ("customer", "department", "project", "value_tier", "revenue_per_request_usd")
_FLAG_OF = {field: flag for flag, (field, _) in _FLAGS.items()}


class _Usage(Exception):
    """A mistake on the command line (exit 2, one line)."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=os.environ.get("TIERWISE_CONFIG", "tierwise.yaml"),
                   help="path to tierwise.yaml (default: $TIERWISE_CONFIG or ./tierwise.yaml)")


def _field_flags(p: argparse.ArgumentParser) -> None:
    helps = {
        "--tier-access": "comma-separated tiers this principal/key may use (default: every tier)",
        "--models": "comma-separated models this principal/key may use (default: every model)",
        "--value-tier": "e.g. free, standard, premium",
    }
    for flag in _FLAGS:
        p.add_argument(flag, dest=_FLAGS[flag][0], default=None, help=helps.get(flag))


def add_parsers(sub: Any) -> None:
    """Register ``keys`` and ``principals`` on the main CLI's subparsers."""
    group = sub.add_parser("keys", help="virtual API keys: create, list, show, rotate, revoke")
    group.__class__ = _OneLineParser  # built by the main parser's class; same state, one-line errors
    keys = group.add_subparsers(dest="keys_cmd", required=True, parser_class=_OneLineParser)
    p = keys.add_parser("create", help="create a key (and its principal when new); prints the key once")
    _config_arg(p)
    p.add_argument("--principal", required=True, help="the principal the key belongs to")
    p.add_argument("--name", help="a unique name for the key")
    _field_flags(p)
    p.add_argument("--expires-at", help="the key stops working then (unix seconds or ISO-8601, UTC if no zone)")
    p.add_argument("--json", action="store_true", help='print {"id": …, "key": …} as JSON')
    p.set_defaults(fn=_guard(cmd_keys_create))

    p = keys.add_parser("list", help="list keys (never the key nor its hash)")
    _config_arg(p)
    p.add_argument("--principal", help="only this principal's keys")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_keys_list))

    p = keys.add_parser("show", help="show one key")
    _config_arg(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_keys_show))

    p = keys.add_parser("rotate", help="replace a key; the old one stays valid for --grace-s seconds")
    _config_arg(p)
    p.add_argument("id")
    p.add_argument("--grace-s", default=None, help=f"seconds the old key keeps working (default {DEFAULT_GRACE_S:g})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_keys_rotate))

    p = keys.add_parser("revoke", help="revoke a key at once")
    _config_arg(p)
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_keys_revoke))

    group = sub.add_parser("principals", help="principals: create, list, show, update, delete")
    group.__class__ = _OneLineParser
    prs = group.add_subparsers(dest="principals_cmd", required=True, parser_class=_OneLineParser)
    p = prs.add_parser("create", help="create a principal")
    _config_arg(p)
    p.add_argument("name")
    _field_flags(p)
    p.add_argument("--disabled", action="store_true", help="create it disabled (its keys are refused)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_principals_create))

    p = prs.add_parser("list", help="list principals")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_principals_list))

    p = prs.add_parser("show", help="show a principal and its keys")
    _config_arg(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_principals_show))

    p = prs.add_parser("update", help="change the fields given ('' clears one)")
    _config_arg(p)
    p.add_argument("name")
    _field_flags(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--disable", dest="disabled", action="store_const", const=True, default=None)
    group.add_argument("--enable", dest="disabled", action="store_const", const=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_principals_update))

    p = prs.add_parser("delete", help="delete a principal and its keys")
    _config_arg(p)
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_guard(cmd_principals_delete))


# -- plumbing -------------------------------------------------------------------------------------------------


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (GovernanceError, _Usage) as exc:
            print(f"tierwise: {exc}", file=sys.stderr)
            return 2

    return run


def _open(args: argparse.Namespace) -> tuple[GovernanceStore, list[str], list[str]]:
    from tierwise.config.load import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else None
        more = f" (and {len(exc.problems) - 1} more: tierwise check-config {args.config})" \
            if len(exc.problems) > 1 else ""
        raise _Usage(f"{exc.source}: {first}{more}" if first else str(exc)) from None
    return open_governance_store(cfg), list(cfg.tiers), list(cfg.models)


def _value(flag: str, kind: str, text: str, *, clearing: bool) -> Any:
    if clearing and (text == "" or (kind == "list" and text == "*")):
        return None
    if kind == "list":
        if text == "*":
            return None
        return [x.strip() for x in text.split(",") if x.strip()]
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise _Usage(f"{flag}: not a number: {text!r}") from None
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise _Usage(f"{flag}: not a whole number: {text!r}") from None
    return text


def _fields(args: argparse.Namespace, *, clearing: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (field, kind) in _FLAGS.items():
        text = getattr(args, field, None)
        if text is not None:
            out[field] = _value(flag, kind, text, clearing=clearing)
    return out


def _flagged(exc: GovernanceError) -> GovernanceError:
    """Name the command-line flag in a validation message instead of the field."""
    if isinstance(exc, InvalidInput) and exc.param in _FLAG_OF:
        field = exc.param
        exc.message = exc.message.replace(f"{field}: ", f"{_FLAG_OF[field]}: ")
        exc.args = (exc.message,)
    return exc


def _parse(model: Any, data: dict[str, Any], tiers: list[str], models: list[str]) -> Any:
    try:
        return parse(model, data, tiers=tiers, models=models)
    except InvalidInput as exc:
        raise _flagged(exc) from None


def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _Usage(f"--expires-at: not a time: {text!r} (unix seconds or ISO-8601)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


def _key_table(keys: list[KeyRecord]) -> str:
    rows = [("ID", "NAME", "PRINCIPAL", "PREFIX", "STATUS", "CREATED", "EXPIRES")]
    rows += [(k.id, k.name or "-", k.principal, k.prefix + "…", k.status(), _iso(k.created_at), _iso(k.expires_at))
             for k in keys]
    return _table(rows)


def _principal_table(ps: list[PrincipalRecord]) -> str:
    def num(x: float | int | None) -> str:
        return "-" if x is None else f"{x:g}"

    rows = [("NAME", "CUSTOMER", "DEPARTMENT", "PROJECT", "VALUE", "TIERS", "DAILY $", "MONTHLY $", "RPM", "TPM",
             "STATE")]
    rows += [(p.name, p.customer or "-", p.department or "-", p.project or "-", p.value_tier or "-",
              ",".join(p.allowed_tiers) if p.allowed_tiers is not None else "*", num(p.daily_budget_usd),
              num(p.monthly_budget_usd), num(p.rpm), num(p.tpm), "disabled" if p.disabled else "enabled")
             for p in ps]
    return _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _describe(rec: PrincipalRecord | KeyRecord) -> str:
    d = rec.as_dict()
    return "\n".join(f"{k}: {_iso(v) if k.endswith('_at') else ('-' if v is None else v)}" for k, v in d.items())


# -- keys -----------------------------------------------------------------------------------------------------


def cmd_keys_create(args: argparse.Namespace) -> int:
    fields = _fields(args)
    store, tiers, models = _open(args)
    try:
        spec_key: dict[str, Any] = {"principal": args.principal}
        if args.name is not None:
            spec_key["name"] = args.name
        if args.expires_at is not None:
            spec_key["expires_at"] = _when(args.expires_at)
        created = False
        try:
            existing: PrincipalRecord | None = store.get_principal(args.principal)
        except NotFound:
            existing = None
        if existing is None:
            # validate the key's own fields before creating anything
            _parse(KeySpec, spec_key, tiers, models)
            spec = _parse(PrincipalSpec, {"name": args.principal, **fields}, tiers, models)
            try:
                store.create_principal(spec)
                created = True
            except Conflict:  # created meanwhile by someone else: use it as it is
                existing = store.get_principal(args.principal)
        if existing is not None:
            for field in _ATTRIBUTES:
                if field in fields and fields[field] != getattr(existing, field):
                    raise _Usage(f"{_FLAG_OF[field]}: principal {existing.name!r} exists with {field} "
                                 f"{getattr(existing, field)!r}; change it with: tierwise principals update "
                                 f"{existing.name} {_FLAG_OF[field]} …")
            spec_key.update({f: v for f, v in fields.items() if f not in _ATTRIBUTES})
        try:
            rec, secret = store.create_key(_parse(KeySpec, spec_key, tiers, models))
        except GovernanceError:
            if created:  # leave nothing half-made behind
                store.delete_principal(args.principal)
            raise
    finally:
        store.close()
    out = {"id": rec.id, "key": secret, "principal": rec.principal, "name": rec.name, "prefix": rec.prefix,
           "principal_created": created}
    if args.json:
        _print_json(out)
    else:
        print(f"{rec.id} for principal {rec.principal}{' (new principal)' if created else ''}")
        print(secret)
        print("(the key is shown only this once: store it now)", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[GovernanceStore]:
    """The configured governance store, closed when the block ends."""
    store, _, _ = _open(args)
    try:
        yield store
    finally:
        store.close()


def cmd_keys_list(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        keys = store.list_keys(args.principal)
    if args.json:
        _print_json([k.as_dict() for k in keys])
    else:
        print(_key_table(keys))
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        rec = store.get_key(args.id)
    print(json.dumps(rec.as_dict()) if args.json else _describe(rec))
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    data = {} if args.grace_s is None else {"grace_s": _value("--grace-s", "float", args.grace_s, clearing=False)}
    try:
        spec = parse(RotateSpec, data)
    except InvalidInput as exc:
        raise _Usage(exc.message.replace("grace_s:", "--grace-s:")) from None
    with _opened(args) as store:
        new, secret = store.rotate_key(args.id, spec.grace_s)
        old = store.get_key(args.id)
    if args.json:
        _print_json({"id": new.id, "key": secret, "principal": new.principal, "name": new.name, "prefix": new.prefix,
                     "replaces": old.id, "replaced_key_expires_at": old.expires_at})
    else:
        print(f"{new.id} replaces {old.id} (which stops working at {_iso(old.expires_at)})")
        print(secret)
        print("(the key is shown only this once: store it now)", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        rec = store.revoke_key(args.id)
    if args.json:
        _print_json(rec.as_dict())
    else:
        print(f"revoked {rec.id} (principal {rec.principal}); gateways refuse it within governance.refresh_s")
    return 0


# -- principals -----------------------------------------------------------------------------------------------


def cmd_principals_create(args: argparse.Namespace) -> int:
    fields = _fields(args)
    store, tiers, models = _open(args)
    try:
        rec = store.create_principal(_parse(PrincipalSpec, {"name": args.name, **fields,
                                                            "disabled": bool(args.disabled)}, tiers, models))
    finally:
        store.close()
    if args.json:
        _print_json(rec.as_dict())
    else:
        print(f"created principal {rec.name}")
    return 0


def cmd_principals_list(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        ps = store.list_principals()
    if args.json:
        _print_json([p.as_dict() for p in ps])
    else:
        print(_principal_table(ps))
    return 0


def cmd_principals_show(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        rec = store.get_principal(args.name)
        keys = store.list_keys(args.name)
    if args.json:
        _print_json({**rec.as_dict(), "keys": [k.as_dict() for k in keys]})
    else:
        print(_describe(rec))
        if keys:
            print("\n" + _key_table(keys))
    return 0


def cmd_principals_update(args: argparse.Namespace) -> int:
    fields = _fields(args, clearing=True)
    if args.disabled is not None:
        fields["disabled"] = args.disabled
    if not fields:
        raise _Usage("nothing to update: give at least one flag (e.g. --rpm 60, --disable)")
    store, tiers, models = _open(args)
    try:
        rec = store.update_principal(args.name, _parse(PrincipalPatch, fields, tiers, models))
    finally:
        store.close()
    if args.json:
        _print_json(rec.as_dict())
    else:
        print(f"updated principal {rec.name}; gateways apply it within governance.refresh_s")
    return 0


def cmd_principals_delete(args: argparse.Namespace) -> int:
    with _opened(args) as store:
        n = store.delete_principal(args.name)
    if args.json:
        _print_json({"name": args.name, "deleted": True, "keys_deleted": n})
    else:
        print(f"deleted principal {args.name} and its {n} key(s)")
    return 0
