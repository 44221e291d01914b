"""The Helm chart renders, the real apiserver accepts it, and its arguments are flags our CLI knows."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.main import build_parser

pytestmark = pytest.mark.cluster

CHART = repo_root() / "deploy" / "helm" / "topodra"


def _helm() -> Path:
    out = subprocess.run(["bash", str(repo_root() / "hack" / "build-helm.sh")], capture_output=True, text=True,
                         check=True).stdout
    return Path(out.strip().splitlines()[-1]) / "helm"


def _render(*sets: str) -> list[dict[str, Any]]:
    argv = [str(_helm()), "template", "t", str(CHART), "-n", "topodra-system", "--kube-version", "1.37.2"]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _container_args(docs: list[dict[str, Any]], kind: str) -> list[str]:
    obj = next(d for d in docs if d["kind"] == kind)
    args: list[str] = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_chart_args_are_known_flags() -> None:
    docs = _render("driver.backend=file", "driver.topologyFile=/etc/topodra/topology.yaml")
    parser = build_parser()
    for kind in ("DaemonSet", "Deployment"):
        args = _container_args(docs, kind)
        parser.parse_args(args)  # exits (SystemExit) on an unknown flag


def test_chart_applies_to_real_apiserver(cluster: LocalCluster, tmp_path: Path) -> None:
    from kubernetes import client

    docs = _render()
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    kubectl = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run([*kubectl, "create", "namespace", "topodra-system"], capture_output=True, check=False)
    r = subprocess.run([*kubectl, "apply", "--dry-run=server", "-f", str(manifest)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    # DeviceClasses are applied for real: their CEL must compile in the real apiserver.
    classes = [d for d in docs if d["kind"] == "DeviceClass"]
    assert sorted(c["metadata"]["name"] for c in classes) == ["gpu.topodra.dev", "nic.topodra.dev"]
    res = client.ResourceV1Api(cluster.api_client())
    for c in classes:
        try:
            res.create_device_class(c)
        except client.ApiException as e:
            assert e.status == 409, e.body


def test_chart_scheduler_config_is_valid_for_kube_scheduler(cluster: LocalCluster, tmp_path: Path) -> None:
    docs = _render()
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "t-scheduler-config")
    cfg = yaml.safe_load(cm["data"]["kube-scheduler-config.yaml"])
    cfg["clientConnection"]["kubeconfig"] = str(cluster.dir / "scheduler.kubeconfig")
    (tmp_path / "ca.crt").write_text(cm["data"]["ca.crt"])
    cfg["extenders"][0]["tlsConfig"]["caFile"] = str(tmp_path / "ca.crt")
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # --write-config-to loads, defaults and validates the configuration, writes it and exits.
    r = subprocess.run([str(cluster.bin_dir / "kube-scheduler"), "--config", str(path),
                        "--write-config-to", str(tmp_path / "out.yaml")], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    written = yaml.safe_load((tmp_path / "out.yaml").read_text())
    ext = written["extenders"][0]
    assert ext["nodeCacheCapable"] is True and ext["filterVerb"] == "filter" and ext["enableHTTPS"] is True
    # The extender nominates each pod's node: kube-scheduler keeps its adaptive sample (0 = adaptive).
    assert not written.get("percentageOfNodesToScore")
    assert (ext["bindVerb"], ext["httpTimeout"], ext.get("ignorable", False)) == ("bind", "30s", False)


def test_chart_refuses_ignorable_with_gang_bind() -> None:
    argv = [str(_helm()), "template", "t", str(CHART), "--kube-version", "1.37.2", "--set", "extender.ignorable=true"]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert r.returncode != 0 and "do not go together" in r.stderr
