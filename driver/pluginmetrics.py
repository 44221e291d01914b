"""Prometheus metrics of the kubelet plugin's claim calls and checkpoint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PluginMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.seconds = Histogram(
            "topodra_kubelet_plugin_claim_seconds",
            "Time to prepare or unprepare one claim",
            ["op"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1, 5, 45),
        )
        self.claims = Counter(
            "topodra_kubelet_plugin_claims", "Claims handled, by operation and outcome", ["op", "outcome"], registry=r
        )
        self.prepared = Gauge("topodra_kubelet_plugin_prepared_claims", "Claims in the checkpoint", registry=r)
        self.checkpoint_corrupt = Counter(
            "topodra_kubelet_plugin_checkpoint_corrupt", "Corrupt checkpoints moved aside", registry=r
        )
        self.status_failures = Counter(
            "topodra_kubelet_plugin_status_write_failures", "Failed ResourceClaim status writes", registry=r
        )
