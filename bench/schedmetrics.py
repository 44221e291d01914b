"""Prometheus text from kube-scheduler and the extender: scrape, subtract two scrapes, sum histograms by label.

Benchmarks scrape before and after a run and keep the difference, so counters that a component
accumulated earlier (start-up, a previous run) do not leak into the figures.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


@dataclass(frozen=True)
class Hist:
    """Observations of one histogram (or of several series summed): how many and their total in seconds."""

    count: float
    total_s: float

    @property
    def mean_ms(self) -> float:
        return 1000 * self.total_s / self.count if self.count else 0.0

    def __add__(self, other: Hist) -> Hist:
        return Hist(self.count + other.count, self.total_s + other.total_s)


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def delta(after: Samples, before: Samples) -> Samples:
    """after - before per series; a series missing before counts from zero (it appeared during the run)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def histograms(s: Samples, name: str, by: str | tuple[str, ...] = (), where: Mapping[str, str] | None = None
               ) -> dict[str, Hist]:
    """Histogram `name` summed over every label except `by` (joined with '/'), keeping series that match `where`."""
    keys = (by,) if isinstance(by, str) else by
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    for (sample, labels), v in s.items():
        if sample == f"{name}_count":
            target = counts
        elif sample == f"{name}_sum":
            target = sums
        else:
            continue
        d = dict(labels)
        if where and any(d.get(k) != want for k, want in where.items()):
            continue
        group = "/".join(d.get(k, "") for k in keys)
        target[group] = target.get(group, 0.0) + v
    return {g: Hist(c, sums.get(g, 0.0)) for g, c in counts.items() if c > 0}


def counter(s: Samples, name: str, where: Mapping[str, str] | None = None) -> float:
    """Sum of every series of a counter (or gauge) that matches `where`."""
    total = 0.0
    for (sample, labels), v in s.items():
        if sample != name:
            continue
        d = dict(labels)
        if where and any(d.get(k) != want for k, want in where.items()):
            continue
        total += v
    return total


def counters(s: Samples, name: str, by: str | tuple[str, ...]) -> dict[str, float]:
    """A counter summed over every label except `by` (joined with '/'); groups that stayed at zero are left out."""
    keys = (by,) if isinstance(by, str) else by
    out: dict[str, float] = {}
    for (sample, labels), v in s.items():
        if sample == name:
            d = dict(labels)
            group = "/".join(d.get(k, "") for k in keys)
            out[group] = out.get(group, 0.0) + v
    return {g: v for g, v in out.items() if v}


def client_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """TLS with a client certificate; without `ca` the server is not verified (kube-scheduler's serving
    certificate is self-signed when no --tls-cert-file is given)."""
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def scrape(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 10) -> Samples:
    with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
        return parse(r.read().decode())
