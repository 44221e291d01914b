"""The KubeSchedulerConfiguration that makes kube-scheduler call the extender (contract §3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


@dataclass(frozen=True)
class SchedulerSettings:
    url: str = "https://topodra-extender.topodra-system.svc:8443/v1"
    server_name: str = ""  # TLS name to verify; default: the URL's host
    ca_file: str = "/etc/topodra/ca.crt"  # without a CA kube-scheduler does not verify the certificate
    cert_file: str = ""  # client certificate, when the extender runs with --client-ca
    key_file: str = ""
    kubeconfig: str = "/etc/kubernetes/scheduler.conf"
    weight: int = 5
    http_timeout: str = "2s"
    ignorable: bool = False  # fail closed: pods wait while the extender is unreachable
    percentage_of_nodes_to_score: int = 100  # the extender must see every feasible node


def extender_entry(s: SchedulerSettings) -> dict[str, Any]:
    https = s.url.startswith("https://")
    e: dict[str, Any] = {
        "urlPrefix": s.url.rstrip("/"),
        "filterVerb": "filter",
        "prioritizeVerb": "prioritize",
        "weight": s.weight,
        "enableHTTPS": https,
        "httpTimeout": s.http_timeout,
        "nodeCacheCapable": True,
        "managedResources": [],
        "ignorable": s.ignorable,
    }
    if https:
        host = s.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        tls: dict[str, Any] = {"serverName": s.server_name or host}
        if s.ca_file:
            tls["caFile"] = s.ca_file
        if s.cert_file and s.key_file:
            tls["certFile"] = s.cert_file
            tls["keyFile"] = s.key_file
        e["tlsConfig"] = tls
    return e


def scheduler_config(s: SchedulerSettings) -> dict[str, Any]:
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": s.kubeconfig},
        "percentageOfNodesToScore": s.percentage_of_nodes_to_score,
        "profiles": [{"schedulerName": "default-scheduler"}],
        "extenders": [extender_entry(s)],
    }


def render(s: SchedulerSettings) -> str:
    head = (
        "# kube-scheduler configuration calling the topodra extender (`extenders:` applies to every profile).\n"
        "# percentageOfNodesToScore: 100 so that the extender sees every feasible node, not a sample.\n"
    )
    return head + yaml.safe_dump(scheduler_config(s), sort_keys=False)
