"""The Helm chart: renders for both scheduler modes and the real-GPU values, the real apiserver accepts
every object (server-side dry run), its arguments are flags our CLI knows, the values schema refuses
typos and bad combinations with a message, and `helm upgrade` keeps the extender's certificates."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.main import build_parser

pytestmark = pytest.mark.cluster

ROOT = repo_root()
CHART = ROOT / "deploy" / "helm" / "topodra"
REAL_GPUS = CHART / "examples" / "real-gpus.yaml"
OWN_SCHEDULER = CHART / "examples" / "own-scheduler.yaml"
KIND_VALUES = ROOT / "hack" / "kind" / "values-fake-gpus.yaml"
# Keeps installed DaemonSets and Deployments off the session cluster's fake nodes (no kubelet there).
NO_NODE = ("driver.nodeSelector.topodra\\.dev/no-such-node=x", "scheduler.nodeSelector.topodra\\.dev/no-such-node=x",
           "extender.nodeSelector.topodra\\.dev/no-such-node=x")

# name -> (values files, --set values): what the docs tell users to install.
CASES: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    "cluster-mode": ((), ()),
    "own-mode": ((), ("scheduler.mode=own",)),
    "real-gpus": ((REAL_GPUS,), ()),
    "real-gpus-own-scheduler": ((OWN_SCHEDULER,), ()),
    "kind": ((KIND_VALUES,), ()),
    "own-secret": ((), ("extender.tls.source=secret", "extender.tls.secretName=my-tls",
                        "extender.tls.clientAuth=true", "extender.tls.clientSecretName=my-client")),
}


def helm_bin() -> Path:
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-helm.sh")], capture_output=True, text=True,
                         check=True).stdout
    return Path(out.strip().splitlines()[-1]) / "helm"


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(helm_bin()), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stderr}")
    return r


def render(*sets: str, files: tuple[Path, ...] = (), release: str = "t", namespace: str = "topodra-system",
           check: bool = True) -> list[dict[str, Any]]:
    argv = ["template", release, str(CHART), "-n", namespace, "--kube-version", "1.37.2"]
    for f in files:
        argv += ["-f", str(f)]
    for s in sets:
        argv += ["--set", s]
    out = helm(*argv, check=check).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_error(*sets: str) -> str:
    argv = ["template", "t", str(CHART), "--kube-version", "1.37.2"]
    for s in sets:
        argv += ["--set", s]
    r = helm(*argv, check=False)
    assert r.returncode != 0, f"rendered although it should not: {sets}"
    return r.stderr


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} objects"
    return hits[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)


# ---- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_topodra_args_are_known_flags(case: str) -> None:
    files, sets = CASES[case]
    docs = render(*sets, files=files)
    parser = build_parser()
    seen = 0
    for d in docs:
        if d["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in pod_spec(d)["containers"]:
            if c["image"].split("@")[0].rsplit(":", 1)[0].endswith("kube-scheduler"):
                continue
            parser.parse_args(c["args"])  # exits (SystemExit) on an unknown flag
            seen += 1
    assert seen == 2


def test_cluster_mode_extender_runs_beside_the_control_plane_scheduler() -> None:
    docs = render()
    ds = find(docs, "DaemonSet", "t-topodra-extender")
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"} in \
        spec["tolerations"]
    args = container(ds, "extender")["args"]
    assert "--follow-lease=kube-system/kube-scheduler" in args
    assert "--scheduler-name=default-scheduler" in args
    # The init container copies the configuration and the CA into the directory kube-scheduler mounts.
    init = spec["initContainers"][0]
    assert {"name": "host-config", "mountPath": "/host-config"} in init["volumeMounts"]
    host = next(v for v in spec["volumes"] if v["name"] == "host-config")
    assert host["hostPath"] == {"path": "/etc/kubernetes/topodra", "type": "DirectoryOrCreate"}
    cfg = yaml.safe_load(find(docs, "ConfigMap", "t-topodra-scheduler-config")["data"]["kube-scheduler-config.yaml"])
    ext = cfg["extenders"][0]
    assert ext["urlPrefix"] == "https://127.0.0.1:8443/v1"
    assert ext["tlsConfig"] == {"serverName": "127.0.0.1", "caFile": "/etc/kubernetes/topodra/ca.crt",
                                "certFile": "/etc/kubernetes/topodra/client.crt",
                                "keyFile": "/etc/kubernetes/topodra/client.key"}
    assert "--client-ca=/etc/topodra/client-ca/ca.crt" in args  # on by default
    assert cfg["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.conf"
    assert [p["schedulerName"] for p in cfg["profiles"]] == ["default-scheduler"]
    assert not any(d["kind"] == "Deployment" for d in docs)


def test_own_mode_runs_a_second_scheduler_that_only_opted_in_pods_use() -> None:
    docs = render("scheduler.mode=own", "extender.tls.clientAuth=true")
    dep = find(docs, "Deployment", "t-topodra-scheduler")
    assert dep["spec"]["replicas"] == 2
    spec = pod_spec(dep)
    assert "schedulerName" not in spec  # placed by the cluster's scheduler: never waits for the extender
    assert [c["name"] for c in spec["containers"]] == ["kube-scheduler", "extender"]
    assert container(dep, "kube-scheduler")["image"] == "registry.k8s.io/kube-scheduler:v1.37.2"
    args = container(dep, "extender")["args"]
    assert "--follow-lease=topodra-system/t-topodra-scheduler" in args
    assert "--scheduler-name=topodra-scheduler" in args
    assert "--client-ca=/etc/topodra/client-ca/ca.crt" in args
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = find(docs, "PodDisruptionBudget", "t-topodra-scheduler")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    cfg = yaml.safe_load(find(docs, "ConfigMap", "t-topodra-scheduler-config")["data"]["kube-scheduler-config.yaml"])
    assert [p["schedulerName"] for p in cfg["profiles"]] == ["topodra-scheduler"]
    assert cfg["leaderElection"]["resourceName"] == "t-topodra-scheduler"
    assert cfg["extenders"][0]["tlsConfig"]["certFile"] == "/etc/topodra/scheduler/client.crt"
    assert not any(d["kind"] == "DaemonSet" and "extender" in d["metadata"]["name"] for d in docs)
    # The sidecar runs as the pod's service account: the extender's rules are bound to it.
    crb = find(docs, "ClusterRoleBinding", "t-topodra-extender")
    assert crb["subjects"][0]["name"] == spec["serviceAccountName"] == "t-topodra-scheduler"


def test_real_gpu_values_mount_the_host_driver_and_skip_cpu_nodes() -> None:
    docs = render(files=(REAL_GPUS,))
    ds = find(docs, "DaemonSet", "t-topodra-driver")
    spec = pod_spec(ds)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    c = container(ds, "driver")
    assert "--driver-root=/driver-root" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "driver-root")
    assert mount == {"name": "driver-root", "mountPath": "/driver-root", "readOnly": True,
                     "mountPropagation": "HostToContainer"}
    assert next(v for v in spec["volumes"] if v["name"] == "driver-root")["hostPath"]["path"] == "/"
    assert c["securityContext"] == {"privileged": True}  # NVML needs the device cgroup opened
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container(ds, "driver")["image"] == "registry.example.com/topodra:0.1.0"


def test_simulated_devices_run_without_privileges() -> None:
    ds = find(render(files=(KIND_VALUES,)), "DaemonSet", "t-topodra-driver")
    sc = container(ds, "driver")["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert not any(m["name"] == "driver-root" for m in container(ds, "driver")["volumeMounts"])
    init = pod_spec(ds)["initContainers"][0]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["MKNOD"]}


def test_platform_values_reach_every_pod() -> None:
    docs = render("imagePullSecrets[0]=regcred", "image.digest=sha256:" + "a" * 64,
                  "fullnameOverride=gpu", "driver.podAnnotations.team=ml", "driver.podLabels.tier=node",
                  "scheduler.podAnnotations.team=ml", "scheduler.mode=own", "scheduler.podLabels.tier=sched",
                  "driver.serviceAccount.annotations.iam=role", "kubernetesApi.host=10.0.0.1",
                  "kubernetesApi.port=6443", "metrics.serviceMonitor.enabled=true")
    ds = find(docs, "DaemonSet", "gpu-driver")
    dep = find(docs, "Deployment", "gpu-scheduler")
    for obj in (ds, dep):
        assert pod_spec(obj)["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(ds, "driver")["image"] == "ghcr.io/topodra/topodra@sha256:" + "a" * 64
    assert ds["spec"]["template"]["metadata"]["annotations"] == {"team": "ml"}
    assert ds["spec"]["template"]["metadata"]["labels"]["tier"] == "node"
    assert dep["spec"]["template"]["metadata"]["labels"]["tier"] == "sched"
    assert dep["spec"]["template"]["metadata"]["annotations"]["team"] == "ml"
    assert find(docs, "ServiceAccount", "gpu-driver")["metadata"]["annotations"] == {"iam": "role"}
    for c in (container(ds, "driver"), container(dep, "extender"), container(dep, "kube-scheduler")):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.0.0.1", "6443")
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceMonitor"} == {"gpu-driver", "gpu-extender"}
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "Service"} == {"gpu-driver-metrics", "gpu-extender"}
    quota = find(docs, "ResourceQuota")
    scope = quota["spec"]["scopeSelector"]["matchExpressions"][0]
    assert sorted(scope["values"]) == ["system-cluster-critical", "system-node-critical"]


# ---- schema and combinations ----------------------------------------------------------------------


@pytest.mark.parametrize(("sets", "message"), [
    (("driver.nodeSelectr.a=b",), "additional properties 'nodeSelectr' not allowed"),
    (("extender.tls.source=vault",), "value must be one of 'generate', 'secret', 'certManager'"),
    (("scheduler.mode=managed",), "value must be one of 'cluster', 'own'"),
    (("image.digest=latest",), "/image/digest"),
    (("driver.backend=nvml+sysfs",), "/driver/backend"),
    (("extender.port=0",), "/extender/port"),
    (("extender.ignorable=true",), "extender.gangBind and extender.ignorable do not go together"),
    (("scheduler.mode=own", "scheduler.image.repository="),
     "scheduler.mode=own needs scheduler.image.repository"),
    (("scheduler.mode=own", "scheduler.image.tag="), "scheduler.mode=own needs scheduler.image.tag"),
    (("scheduler.mode=own", "extender.enabled=false"), "needs extender.enabled=true"),
    (("extender.tls.source=secret",), "extender.tls.secretName is required"),
    (("extender.tls.source=certManager",), "needs cert-manager"),
    (("driver.backend=file",), "driver.backend=file needs driver.topologyFile"),
    (("driver.fakeDeviceNodes=4",), "set driver.devRoot too"),
    (("scheduler.mode=own", "scheduler.hostNetwork=true"), "collides with the cluster's own kube-scheduler"),
    (("driver.serviceAccount.create=false",), "driver.serviceAccount.name is required"),
])
def test_values_are_refused_with_a_message(sets: tuple[str, ...], message: str) -> None:
    assert message in render_error(*sets)


def test_ignorable_without_gang_bind_fails_open() -> None:
    docs = render("extender.ignorable=true", "extender.gangBind=false")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "t-topodra-scheduler-config")["data"]["kube-scheduler-config.yaml"])
    ext = cfg["extenders"][0]
    assert ext["ignorable"] is True and "bindVerb" not in ext and ext["httpTimeout"] == "2s"


def test_cert_manager_objects() -> None:
    docs = render("extender.tls.source=certManager", "extender.tls.certManager.skipCheck=true",
                  "extender.tls.clientAuth=true")
    certs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Certificate"}
    assert set(certs) == {"t-topodra-extender-ca", "t-topodra-extender-tls", "t-topodra-extender-client-tls"}
    assert certs["t-topodra-extender-tls"]["spec"]["ipAddresses"] == ["127.0.0.1"]
    assert "localhost" in certs["t-topodra-extender-tls"]["spec"]["dnsNames"]
    assert certs["t-topodra-extender-tls"]["spec"]["issuerRef"]["name"] == "t-topodra-extender-ca"
    assert not any(d["kind"] == "Secret" for d in docs)
    docs = render("extender.tls.source=certManager", "extender.tls.certManager.skipCheck=true",
                  "extender.tls.certManager.issuerRef.name=corp",
                  "extender.tls.certManager.issuerRef.kind=ClusterIssuer")
    assert not any(d["kind"] == "Issuer" for d in docs)
    for cert in (d for d in docs if d["kind"] == "Certificate"):  # serving and client
        assert cert["spec"]["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer", "group": "cert-manager.io"}


# ---- the real apiserver ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_apiserver_accepts_every_object(cluster: LocalCluster, tmp_path: Path, case: str) -> None:
    files, sets = CASES[case]
    docs = render(*sets, files=files, namespace="topodra-system")
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    kubectl(cluster, "create", "namespace", "topodra-system")
    r = kubectl(cluster, "apply", "--dry-run=server", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    kinds = {d["kind"] for d in docs}
    assert {"DaemonSet", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole"} <= kinds


def test_device_classes_compile(cluster: LocalCluster) -> None:
    from kubernetes import client

    classes = [d for d in render() if d["kind"] == "DeviceClass"]
    assert sorted(c["metadata"]["name"] for c in classes) == ["gpu.topodra.dev", "nic.topodra.dev"]
    res = client.ResourceV1Api(cluster.api_client())
    for c in classes:  # created for real: their CEL must compile in the real apiserver
        try:
            res.create_device_class(c)
        except client.ApiException as e:
            assert e.status == 409, e.body


@pytest.mark.parametrize("mode", ["cluster", "own"])
def test_scheduler_config_is_valid_for_kube_scheduler(cluster: LocalCluster, tmp_path: Path, mode: str) -> None:
    docs = render(f"scheduler.mode={mode}", "extender.tls.clientAuth=true")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "t-topodra-scheduler-config")["data"]["kube-scheduler-config.yaml"])
    cfg["clientConnection"]["kubeconfig"] = str(cluster.dir / "scheduler.kubeconfig")
    tls = cfg["extenders"][0]["tlsConfig"]
    for key in ("caFile", "certFile", "keyFile"):  # the files exist where the pods put them; here: stand-ins
        (tmp_path / key).write_text("")
        tls[key] = str(tmp_path / key)
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
    assert not written.get("percentageOfNodesToScore")  # the extender nominates: the adaptive sample stays
    assert (ext["bindVerb"], ext["httpTimeout"], ext.get("ignorable", False)) == ("bind", "30s", False)
    assert written["leaderElection"]["leaderElect"] is True
    if mode == "own":
        assert written["leaderElection"]["resourceNamespace"] == "topodra-system"


# ---- helm install / upgrade into the real apiserver -----------------------------------------------


@pytest.fixture()
def release(cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """A release name and a namespace of its own; uninstalled afterwards."""
    from kubernetes import client

    name = f"r{uuid.uuid4().hex[:6]}"
    ns = f"helm-{name}"
    client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": ns}})
    try:
        yield name, ns
    finally:
        helm("uninstall", name, "-n", ns, "--wait", "--timeout", "120s", kubeconfig=cluster.kubeconfig,
             check=False)
        kubectl(cluster, "delete", "namespace", ns, "--wait=false")


def _install(cluster: LocalCluster, verb: str, name: str, ns: str, *sets: str) -> str:
    argv = [verb, name, str(CHART), "-n", ns, "--set", "deviceClasses.create=false"]
    for s in (*NO_NODE, *sets):
        argv += ["--set", s]
    return helm(*argv, kubeconfig=cluster.kubeconfig).stdout


def _secrets(cluster: LocalCluster, ns: str) -> dict[str, dict[str, str]]:
    from kubernetes import client

    items = client.CoreV1Api(cluster.api_client()).list_namespaced_secret(ns).items
    return {s.metadata.name: dict(s.data or {}) for s in items if s.type == "kubernetes.io/tls"}


@pytest.mark.parametrize("mode", ["cluster", "own"])
def test_upgrade_keeps_the_extender_certificates(cluster: LocalCluster, release: tuple[str, str],
                                                 mode: str) -> None:
    from cryptography import x509

    name, ns = release
    notes = _install(cluster, "install", name, ns, f"scheduler.mode={mode}", "extender.tls.clientAuth=true")
    if mode == "cluster":
        assert "--config=/etc/kubernetes/topodra/kube-scheduler-config.yaml" in notes
    else:
        assert "schedulerName: topodra-scheduler" in notes
    first = _secrets(cluster, ns)
    ext = f"{name}-topodra-extender"
    assert set(first) == {f"{ext}-ca", f"{ext}-tls", f"{ext}-client-tls"}
    srv = x509.load_pem_x509_certificate(base64.b64decode(first[f"{ext}-tls"]["tls.crt"]))
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ext_kind = "daemonset" if mode == "cluster" else "deployment"
    ext_obj = ext if mode == "cluster" else f"{name}-topodra-scheduler"

    def template(kind: str, obj: str) -> dict[str, Any]:
        got = kubectl(cluster, "-n", ns, "get", kind, obj, "-o", "yaml")
        assert got.returncode == 0, got.stderr
        spec: dict[str, Any] = yaml.safe_load(got.stdout)["spec"]["template"]
        return spec

    ext_before = template(ext_kind, ext_obj)
    driver_before = template("daemonset", f"{name}-topodra-driver")
    # A driver-only change rolls the drivers, not the extender (which, in mode cluster, would need the
    # extender out of kube-scheduler's path first).
    _install(cluster, "upgrade", name, ns, f"scheduler.mode={mode}", "extender.tls.clientAuth=true",
             "driver.logLevel=debug")
    assert template(ext_kind, ext_obj) == ext_before
    assert template("daemonset", f"{name}-topodra-driver") != driver_before
    # A changed extender value rolls the extender pods; every certificate and the CA kube-scheduler trusts stay.
    _install(cluster, "upgrade", name, ns, f"scheduler.mode={mode}", "extender.tls.clientAuth=true",
             "extender.weight=7", "driver.logLevel=debug")
    after = template(ext_kind, ext_obj)["metadata"]["annotations"]
    assert after["checksum/scheduler-config"] != ext_before["metadata"]["annotations"]["checksum/scheduler-config"]
    assert _secrets(cluster, ns) == first
    # Turning client auth off and on again issues a client certificate from the same CA.
    _install(cluster, "upgrade", name, ns, f"scheduler.mode={mode}", "extender.tls.clientAuth=false")
    assert set(_secrets(cluster, ns)) == {f"{ext}-ca", f"{ext}-tls"}
    _install(cluster, "upgrade", name, ns, f"scheduler.mode={mode}", "extender.tls.clientAuth=true")
    again = _secrets(cluster, ns)
    assert again[f"{ext}-tls"] == first[f"{ext}-tls"] and again[f"{ext}-ca"] == first[f"{ext}-ca"]
    assert again[f"{ext}-client-tls"]["ca.crt"] == first[f"{ext}-ca"]["tls.crt"]
    # What the pods mount names those Secrets.
    r = kubectl(cluster, "-n", ns, "get", "daemonset,deployment", "-o", "yaml")
    assert f"{ext}-tls" in r.stdout and f"{ext}-client-tls" in r.stdout


def test_server_side_dry_run_install(cluster: LocalCluster, release: tuple[str, str]) -> None:
    """`helm install --dry-run=server` (what a platform team runs first) with the real-GPU values."""
    name, ns = release
    r = helm("install", name, str(CHART), "-n", ns, "-f", str(REAL_GPUS), "--set", "deviceClasses.create=false",
             "--dry-run=server", kubeconfig=cluster.kubeconfig)
    assert "kind: ValidatingAdmissionPolicy" in r.stdout


def test_opt_in_resource_keeps_other_pods_off_the_extender(cluster: LocalCluster, namespace: str,
                                                           tmp_path: Path) -> None:
    """With extender.optInResource, kube-scheduler (the chart's configuration, the extender unreachable)
    still places pods that do not request the resource, and only those that do wait for the extender."""
    from kubernetes import client

    from topodra_cli.localcluster.processes import free_port

    name = f"optin-{uuid.uuid4().hex[:6]}"
    docs = render("scheduler.mode=own", f"scheduler.name={name}", "extender.optInResource=topodra.dev/placement")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "t-topodra-scheduler-config")["data"]["kube-scheduler-config.yaml"])
    cfg["clientConnection"]["kubeconfig"] = str(cluster.dir / "scheduler.kubeconfig")
    cfg["leaderElection"] = {"leaderElect": False}  # the cluster's scheduler user may not hold the chart's Lease
    ext = cfg["extenders"][0]
    assert ext["managedResources"] == [{"name": "topodra.dev/placement", "ignoredByScheduler": True}]
    ext["urlPrefix"] = f"https://127.0.0.1:{free_port()}/v1"  # nothing listens: the extender is down
    ext["tlsConfig"] = {"serverName": "127.0.0.1", "caFile": str(cluster.pki_dir / "ca.crt")}
    path = tmp_path / "sched.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = (tmp_path / "scheduler.log").open("ab")
    proc = subprocess.Popen([str(cluster.bin_dir / "kube-scheduler"), f"--config={path}", "--bind-address=127.0.0.1",
                             f"--secure-port={free_port()}"], stdout=log, stderr=subprocess.STDOUT)
    node = f"optin-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.api_client())
    try:
        cluster.add_fake_node(node, {"topodra.dev/opt-in-test": node})

        def pod(pod_name: str, opt_in: bool) -> dict[str, Any]:
            c: dict[str, Any] = {"name": "c", "image": "stand-in:never-run"}
            if opt_in:
                c["resources"] = {"limits": {"topodra.dev/placement": "1"}}
            return {"metadata": {"name": pod_name},
                    "spec": {"schedulerName": name, "nodeSelector": {"topodra.dev/opt-in-test": node},
                             "containers": [c]}}

        core.create_namespaced_pod(namespace, pod("plain", False))
        core.create_namespaced_pod(namespace, pod("opted-in", True))
        deadline = time.monotonic() + 60
        while not core.read_namespaced_pod("plain", namespace).spec.node_name:
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()[-3000:]
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while True:
            events = [e.message or "" for e in core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=opted-in").items]
            if any("/v1/filter" in m and "connection refused" in m for m in events):
                break
            assert time.monotonic() < deadline, events
            time.sleep(0.5)
        assert not core.read_namespaced_pod("opted-in", namespace).spec.node_name
    finally:
        proc.terminate()
        proc.wait(15)
        core.delete_node(node)
