"""Prometheus metrics of one extender instance (own registry: no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets around the 5 ms target, up to kube-scheduler's default 5 s httpTimeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.latency = Histogram("topodra_extender_request_duration_seconds",
                                 "Time to answer one extender call, by verb", ["verb"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.requests = Counter("topodra_extender_requests_total", "Extender calls by verb and HTTP code",
                                ["verb", "code"], registry=r)
        self.decisions = Counter("topodra_extender_node_decisions_total",
                                 "Per-node filter outcomes: passed, failed (resolvable), unresolvable",
                                 ["outcome"], registry=r)
        self.errors = Counter("topodra_extender_filter_errors_total",
                              "Filter calls answered with Error (retry), by cause", ["cause"], registry=r)
        self.cache_objects = Gauge("topodra_extender_cache_objects", "Objects in the extender's cache", ["kind"],
                                   registry=r)
        self.cache_synced = Gauge("topodra_extender_cache_synced", "1 when every watched kind has been listed",
                                  registry=r)
        self.cache_stale = Gauge("topodra_extender_cache_stale", "1 while some watch cannot reach the apiserver",
                                 registry=r)
        self.watch_restarts = Counter("topodra_extender_watch_restarts_total",
                                      "Watch restarts by kind and cause (relist, error)", ["kind", "cause"],
                                      registry=r)
        self.watch_events = Counter("topodra_extender_watch_events_total", "Watch events applied by kind",
                                    ["kind"], registry=r)
        self.memo_entries = Gauge("topodra_extender_fit_memo_entries",
                                  "Memoised (requirements, node shape) feasibility results", registry=r)
        self.plan_seconds = Histogram("topodra_extender_plan_seconds",
                                      "Time to plan one pod's node, or one whole gang", ["what"],
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.steered = Counter("topodra_extender_steered_total",
                               "Pending pods planned (nominated, no_node); nominations refused by the filter",
                               ["outcome"], registry=r)
        self.binds = Counter("topodra_extender_binds_total", "Bindings the extender made, by outcome", ["outcome"],
                             registry=r)
        self.active = Gauge("topodra_extender_active",
                             "1 while this replica is the active one (always 1 without --follow-lease)", registry=r)
        self.active.set(1)
        self.gangs = Gauge("topodra_extender_gangs", "Gangs known to the extender, by phase", ["phase"], registry=r)
