"""The live cost dashboard at ``/dashboard`` (issue 10): spend, allocation, routing, escalations, savings against
the flagship, latency, errors and budgets, read from the ledger with SQL aggregates.

Modules: :mod:`.config` (the ``dashboard:`` section), :mod:`.query` (filters, validated), :mod:`.sql` (the
aggregates, SQLite and PostgreSQL), :mod:`.reader` (read-only connections on threads of its own), :mod:`.summary`
(panels' JSON), :mod:`.web` (routes, access gates). The page is ``static/`` (HTML, CSS and plain JavaScript drawing
SVG: no build step, no CDN, nothing fetched from anywhere but the gateway).

This package's ``__init__`` imports nothing: ``tierwise.config.schema`` imports :mod:`.config` from it.
"""
