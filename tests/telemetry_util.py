"""Reading /metrics in tests: the Prometheus text-format parser, samples indexed by name and labels."""

from __future__ import annotations

from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by sample name (``tierwise_requests_total``, ``…_bucket``, …)."""
    out: Samples = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), s.value))
    return out


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``."""
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def by(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """Sums of ``name`` grouped by the label ``keys`` (zero groups left out)."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, v in samples.get(name, []):
        out[tuple(labels[k] for k in keys)] += v
    return {k: v for k, v in out.items() if v}
