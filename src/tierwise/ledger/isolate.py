"""Find the row that makes a batch unwritable, instead of retrying the same batch forever.

A store refuses a batch for one of two reasons: the store is down (every write fails) or one row in it is
poison (every write *containing it* fails). Bisecting tells them apart with O(log n) extra writes: when one half
goes in and the other does not, the store is up and the fault is in the other half. A poison row is first retried
cleaned (:func:`tierwise.sanitize.clean_json`), which fixes anything a client could have smuggled in; only a row
the store refuses even then is quarantined, with the store's error, in a JSON Lines file beside the fallback file.

The store can go down *during* a bisection, after a half went in: a healthy row's lone retry then fails too, and
it would look like poison. So before a row is quarantined, a row this bisection did store is written again with
``keep`` (a write that keeps existing rows: no change to the ledger, but the store must answer); if that fails
too, the store is down, and the row stays queued. What can still slip through (the store failing for exactly the
row's write and recovering for the probe) ``tierwise ledger recover`` retries from the quarantine file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson

from tierwise.ledger.store import Row
from tierwise.sanitize import clean_json

log = logging.getLogger("tierwise.ledger")

E = TypeVar("E")  # an entry: whatever the caller tracks per row (the row is got with ``row_of``)
TryWrite = Callable[[list[Row]], "str | None"]  # None: written; else the store's error, type and message


def isolate(entries: Sequence[E], row_of: Callable[[E], Row], try_write: TryWrite,
            quarantine: Callable[[Row, str], bool], keep: TryWrite | None = None, *,
            proof: Row | None = None) -> list[E]:
    """Write ``entries`` (a batch the store just refused) in halves; return the entries still not stored.

    ``proof`` is a row some write of this bisection stored: the store was up then, so a lone failing row is poison
    — if ``keep([proof])`` still succeeds (see the module docstring). With the store apparently down (both halves
    fail and nothing proves it up) the batch comes back whole, to be retried later.
    """
    store_up = proof is not None
    if not entries:
        return []
    if len(entries) == 1:
        row = row_of(entries[0])
        cleaned = clean_json(row)
        if cleaned != row:  # something a client smuggled in: the cleaned row is what the ledger can keep
            error = try_write([cleaned])
            if error is None:
                log.warning("ledger row %s stored after cleaning unstorable characters", row.get("id"))
                return []
        elif not store_up:
            return list(entries)  # a clean row alone, store not proven up: retry later with the others
        else:
            error = try_write([row])  # one more try on its own, which also tells us the store's error
            if error is None:
                return []
        if store_up and _still_up(keep, proof) and quarantine(cleaned, error):
            return []
        return list(entries)
    mid = len(entries) // 2
    first, second = entries[:mid], entries[mid:]
    err_first = try_write([row_of(e) for e in first])
    err_second = try_write([row_of(e) for e in second])
    if err_first is not None and err_second is not None and not store_up:
        return list(entries)  # nothing went in: most likely the store is down, not the rows
    if err_first is None:
        proof = row_of(first[0])
    elif err_second is None:
        proof = row_of(second[0])
    left = isolate(first, row_of, try_write, quarantine, keep, proof=proof) if err_first is not None else []
    right = isolate(second, row_of, try_write, quarantine, keep, proof=proof) if err_second is not None else []
    return left + right


def _still_up(keep: TryWrite | None, proof: Row | None) -> bool:
    """Whether the store still answers: ``keep`` re-writes a row it already holds, changing nothing."""
    if keep is None or proof is None:
        return True
    error = keep([proof])
    if error is not None:
        log.warning("ledger store stopped answering during a bisection (%s): the rows stay queued", error)
        return False
    return True


def append_quarantine(path: Path, row: Row, error: str) -> bool:
    """Append one refused row (with the store's error) to ``path``, fsynced. False if that failed too."""
    line = orjson.dumps({"error": error, "row": row}, default=str) + b"\n"
    try:
        with open(path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        log.critical("ledger: could not quarantine row %s to %s: %s", row.get("id"), path, exc)
        return False
    log.error("ledger: row %s refused by the store (%s); quarantined to %s", row.get("id"), error, path)
    return True
