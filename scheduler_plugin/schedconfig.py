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
    http_timeout: str = ""  # default: 2s, or 30s with bind (a held gang bind must fit in it)
    ignorable: bool = False  # fail closed: pods wait while the extender is unreachable
    # 0: kube-scheduler's adaptive default. The extender plans every pod over the whole cluster from its cache
    # and nominates the node; the sample only matters for pods it could not nominate.
    percentage_of_nodes_to_score: int = 0
    bind: bool = False  # bindVerb: the gang bind barrier (all members bound together)


BIND_HTTP_TIMEOUT = "30s"  # held bind calls answer within the extender's --bind-hold-seconds (default 20)


class SettingsError(ValueError):
    """Settings that kube-scheduler would accept but that break a guarantee; the message says which."""


def validate(s: SchedulerSettings) -> None:
    if s.bind and s.ignorable:
        raise SettingsError("bind and ignorable do not go together: with ignorable: true a failed or held bind "
                            "falls through to kube-scheduler's default binder, which binds the pod anyway")


def extender_entry(s: SchedulerSettings) -> dict[str, Any]:
    https = s.url.startswith("https://")
    e: dict[str, Any] = {
        "urlPrefix": s.url.rstrip("/"),
        "filterVerb": "filter",
        "prioritizeVerb": "prioritize",
        "weight": s.weight,
        "enableHTTPS": https,
        "httpTimeout": s.http_timeout or (BIND_HTTP_TIMEOUT if s.bind else "2s"),
        "nodeCacheCapable": True,
        "managedResources": [],
        "ignorable": s.ignorable,
    }
    if s.bind:
        e["bindVerb"] = "bind"
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
    validate(s)
    doc: dict[str, Any] = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": s.kubeconfig},
    }
    if s.percentage_of_nodes_to_score:
        doc["percentageOfNodesToScore"] = s.percentage_of_nodes_to_score
    doc["profiles"] = [{"schedulerName": "default-scheduler"}]
    doc["extenders"] = [extender_entry(s)]
    return doc


def render(s: SchedulerSettings) -> str:
    head = (
        "# kube-scheduler configuration calling the topodra extender (`extenders:` applies to every profile).\n"
        "# The extender nominates each pod's node (planned over the whole cluster), so kube-scheduler keeps its\n"
        "# adaptive percentageOfNodesToScore. bindVerb (--bind) turns on the gang bind barrier.\n"
    )
    return head + yaml.safe_dump(scheduler_config(s), sort_keys=False)
