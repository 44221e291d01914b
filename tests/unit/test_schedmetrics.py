"""The benchmark's Prometheus helpers: parse, subtract two scrapes, sum histograms by label."""

from __future__ import annotations

import pytest

from bench.schedmetrics import Hist, counter, counters, delta, histograms, parse

EP = "scheduler_framework_extension_point_duration_seconds"
HEAD = f"""\
# HELP {EP} [STABLE] Latency for running all plugins of a specific extension point.
# TYPE {EP} histogram
"""
COUNTER_HEAD = """\
# HELP topodra_extender_requests_total Extender calls
# TYPE topodra_extender_requests_total counter
"""


def hist(point: str, status: str, count: int, total: float) -> str:
    labels = f'extension_point="{point}",profile="default-scheduler",status="{status}"'
    return (f'{EP}_bucket{{{labels},le="+Inf"}} {count}\n{EP}_sum{{{labels}}} {total}\n'
            f"{EP}_count{{{labels}}} {count}\n")


BEFORE = (HEAD + hist("Filter", "Success", 2, 0.5) + COUNTER_HEAD
          + 'topodra_extender_requests_total{code="200",verb="filter"} 3.0\n')
AFTER = (HEAD + hist("Filter", "Success", 12, 2.5) + hist("Filter", "Unschedulable", 4, 1.0)
         + hist("Bind", "Success", 1, 0.01) + COUNTER_HEAD
         + 'topodra_extender_requests_total{code="200",verb="filter"} 10.0\n'
         + 'topodra_extender_requests_total{code="500",verb="filter"} 1.0\n')


def test_delta_sums_statuses_per_extension_point() -> None:
    d = delta(parse(AFTER), parse(BEFORE))
    h = histograms(d, EP, by="extension_point")
    # Filter: 10 more successes taking 2.0 s, plus 4 new unschedulable taking 1.0 s.
    assert h["Filter"] == Hist(14, 3.0)
    assert h["Filter"].mean_ms == pytest.approx(3000 / 14)
    assert h["Bind"] == Hist(1, 0.01)
    only_ok = histograms(d, EP, by="extension_point",
                         where={"status": "Success"})
    assert only_ok["Filter"] == Hist(10, 2.0)


def test_series_without_new_observations_are_left_out() -> None:
    d = delta(parse(BEFORE), parse(BEFORE))
    assert histograms(d, EP, by="extension_point") == {}


def test_counter_sums_matching_series() -> None:
    d = delta(parse(AFTER), parse(BEFORE))
    assert counter(d, "topodra_extender_requests_total", {"verb": "filter"}) == 8.0
    assert counter(d, "topodra_extender_requests_total", {"code": "500"}) == 1.0
    assert counters(d, "topodra_extender_requests_total", by="code") == {"200": 7.0, "500": 1.0}
    assert counters(d, "topodra_extender_requests_total", by=("verb", "code"))["filter/500"] == 1.0
