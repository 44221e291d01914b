"""The chart's security, against the real apiserver.

- The ValidatingAdmissionPolicy: a driver pod's token (bound to a pod on node A) may write ResourceSlices
  of node A only; writes for node B, for another driver, or with a token bound to no pod are denied.
- The policy names the service account the DaemonSet really runs as.
- Least privilege: each service account's token may do what the code does and is refused the rest, and
  every rule the chart grants is one the code uses (USED below says where).
- Pod security settings: extender non-root with no capabilities, driver privileged only with NVML.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_helm_chart import (
    CHART,
    NO_NODE,
    REAL_GPUS,
    container,
    find,
    helm,
    kubectl,
    pod_spec,
    render,
)
from topodra_cli.localcluster import LocalCluster

pytestmark = pytest.mark.cluster


@dataclass(frozen=True)
class Use:
    group: str
    resource: str
    verb: str
    namespace: str = "*"     # "*": any namespace (or cluster-scoped); else that namespace only
    name: str = "*"          # resourceNames
    where: str = ""          # the code that makes this call


# Every API call topodra makes in a chart install. A rule the chart grants that is not here fails
# test_every_granted_rule_is_used; each entry is checked as allowed with the account's real token.
# "{lease_ns}"/"{lease}" are the followed Lease (mode cluster: kube-system/kube-scheduler).
DRIVER_USES = (
    Use("resource.k8s.io", "resourceslices", "list", where="driver/publisher.py SlicePublisher (field selector)"),
    Use("resource.k8s.io", "resourceslices", "watch", where="driver/publisher.py SlicePublisher._watch"),
    Use("resource.k8s.io", "resourceslices", "create", where="driver/publisher.py apply_plan POST"),
    Use("resource.k8s.io", "resourceslices", "update", where="driver/publisher.py apply_plan PUT"),
    Use("resource.k8s.io", "resourceslices", "delete", where="driver/publisher.py apply_plan DELETE"),
    Use("resource.k8s.io", "resourceclaims", "get", where="driver/claims.py KubeClientClaimsApi.get_claim"),
    Use("resource.k8s.io", "resourceclaims/status", "patch",
        where="driver/claims.py apply_device_status (server-side apply)"),
    Use("resource.k8s.io", "resourceclaims/driver", "associated-node:patch", name="topodra.dev",
        where="driver/claims.py apply_device_status: 1.36+ check for node-local drivers"),
    Use("", "nodes", "get", where="driver/publisher.py: the Node's UID for the slices' owner reference"),
    Use("", "events", "create", namespace="default", where="driver/claims.py node_event"),
)
EXTENDER_USES = (
    Use("", "nodes", "list", where="scheduler_plugin/cache.py KINDS"),
    Use("", "nodes", "watch", where="scheduler_plugin/cache.py KINDS"),
    *(Use("resource.k8s.io", r, v, where="scheduler_plugin/cache.py KINDS")
      for r in ("resourceslices", "resourceclaimtemplates", "deviceclasses", "resourceclaims")
      for v in ("list", "watch")),
    Use("resource.k8s.io", "resourceclaims", "get", where="scheduler_plugin/apiwrite.py get_claim"),
    Use("resource.k8s.io", "resourceclaims/status", "update", where="scheduler_plugin/apiwrite.py release_claim PUT"),
    Use("", "pods", "list", where="scheduler_plugin/cache.py KINDS"),
    Use("", "pods", "watch", where="scheduler_plugin/cache.py KINDS"),
    Use("", "pods", "get", where="scheduler_plugin/steer.py: the pod read again before steering"),
    Use("", "pods", "patch", where="scheduler_plugin/apiwrite.py annotate (gang plan, status)"),
    Use("", "pods/status", "patch", where="scheduler_plugin/apiwrite.py nominate (nominatedNodeName)"),
    Use("", "pods/binding", "create", where="scheduler_plugin/apiwrite.py bind"),
    Use("batch", "jobs", "list", where="scheduler_plugin/cache.py GANG_KINDS"),
    Use("batch", "jobs", "watch", where="scheduler_plugin/cache.py GANG_KINDS"),
    Use("scheduling.k8s.io", "podgroups", "list", where="scheduler_plugin/cache.py GANG_KINDS (optional)"),
    Use("scheduling.k8s.io", "podgroups", "watch", where="scheduler_plugin/cache.py GANG_KINDS (optional)"),
    Use("scheduling.x-k8s.io", "podgroups", "list", where="scheduler_plugin/cache.py GANG_KINDS (optional)"),
    Use("scheduling.x-k8s.io", "podgroups", "watch", where="scheduler_plugin/cache.py GANG_KINDS (optional)"),
    Use("", "events", "create", where="scheduler_plugin/apiwrite.py event (in the pod's namespace)"),
    Use("coordination.k8s.io", "leases", "list", namespace="{lease_ns}", name="{lease}",
        where="scheduler_plugin/leadership.py LeaseFollower (field selector metadata.name)"),
    Use("coordination.k8s.io", "leases", "watch", namespace="{lease_ns}", name="{lease}",
        where="scheduler_plugin/leadership.py LeaseFollower"),
)
# (group, resource, verb, namespace, name) each account must be refused.
DRIVER_REFUSED = (
    ("", "secrets", "get", "kube-system", ""), ("", "secrets", "list", "", ""), ("", "pods", "create", "x", ""),
    ("", "pods", "list", "", ""), ("", "nodes", "patch", "", ""), ("", "nodes", "list", "", ""),
    ("", "nodes/status", "patch", "", ""), ("resource.k8s.io", "resourceclaims", "update", "x", ""),
    ("resource.k8s.io", "resourceclaims", "delete", "x", ""), ("resource.k8s.io", "resourceclaims", "list", "", ""),
    ("resource.k8s.io", "resourceclaims/driver", "arbitrary-node:patch", "", "topodra.dev"),
    ("resource.k8s.io", "resourceclaims/driver", "associated-node:patch", "", "other.vendor.com"),
    ("resource.k8s.io", "deviceclasses", "create", "", ""), ("resource.k8s.io", "resourceslices", "patch", "", ""),
    ("resource.k8s.io", "resourceslices", "deletecollection", "", ""), ("", "events", "create", "kube-system", ""),
    ("", "pods/binding", "create", "x", ""), ("coordination.k8s.io", "leases", "update", "kube-system", ""),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "delete", "", ""),
)
EXTENDER_REFUSED = (
    ("", "secrets", "get", "kube-system", ""), ("", "secrets", "list", "", ""), ("", "configmaps", "get", "x", ""),
    ("", "pods", "create", "x", ""), ("", "pods", "delete", "x", ""), ("", "pods", "update", "x", ""),
    ("", "pods/exec", "create", "x", ""), ("", "pods/eviction", "create", "x", ""), ("", "nodes", "get", "", ""),
    ("", "nodes", "patch", "", ""), ("resource.k8s.io", "resourceslices", "create", "", ""),
    ("resource.k8s.io", "resourceclaims", "update", "x", ""), ("resource.k8s.io", "resourceclaims", "delete", "x", ""),
    ("resource.k8s.io", "resourceclaims/status", "patch", "x", ""),
    ("resource.k8s.io", "deviceclasses", "create", "", ""),
    ("batch", "jobs", "patch", "x", ""), ("coordination.k8s.io", "leases", "update", "kube-system", "kube-scheduler"),
    ("coordination.k8s.io", "leases", "get", "kube-system", "kube-controller-manager"),
    ("coordination.k8s.io", "leases", "list", "kube-system", ""),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create", "", ""),
)


# Upstream roles the chart's own kube-scheduler (mode own) is bound to by reference: the cluster keeps
# them in step with its version.
BUILTIN_ROLES = ("system:kube-scheduler", "system:volume-scheduler", "extension-apiserver-authentication-reader")


def _rule_keys(rule: dict[str, Any], namespace: str) -> set[tuple[str, str, str, str, str]]:
    return {(g, r, v, namespace, n)
            for g in rule.get("apiGroups", [""]) for r in rule["resources"] for v in rule["verbs"]
            for n in (rule.get("resourceNames") or ["*"])}


def granted(docs: list[dict[str, Any]], account: str, namespace: str) -> set[tuple[str, str, str, str, str]]:
    """Every (group, resource, verb, namespace, name) the chart grants to one service account."""
    roles = {(d["kind"], d["metadata"].get("namespace", "*"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("ClusterRole", "Role")}
    out: set[tuple[str, str, str, str, str]] = set()
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == namespace
                   for s in b["subjects"]):
            continue
        ns = b["metadata"].get("namespace", "*")
        ref = b["roleRef"]
        if ref["name"] in BUILTIN_ROLES:
            out.add(("builtin", ref["kind"], ref["name"], ns, "*"))
            continue
        role = roles.get((ref["kind"], ns if ref["kind"] == "Role" else "*", ref["name"]))
        assert role is not None, f"{b['metadata']['name']} binds {ref['name']}, which the chart does not define"
        for rule in role["rules"]:
            out |= _rule_keys(rule, ns)
    return out


def _uses(uses: tuple[Use, ...], lease: str) -> set[tuple[str, str, str, str, str]]:
    lease_ns, lease_name = lease.split("/")
    return {(u.group, u.resource, u.verb, u.namespace.format(lease_ns=lease_ns),
             u.name.format(lease=lease_name)) for u in uses}


@pytest.mark.parametrize("mode", ["cluster", "own"])
def test_every_granted_rule_is_used(mode: str) -> None:
    docs = render(f"scheduler.mode={mode}")
    ns = "topodra-system"
    lease = "kube-system/kube-scheduler" if mode == "cluster" else f"{ns}/t-topodra-scheduler"
    assert granted(docs, "t-topodra-driver", ns) == _uses(DRIVER_USES, lease)
    ext_account = "t-topodra-extender" if mode == "cluster" else "t-topodra-scheduler"
    ext = granted(docs, ext_account, ns)
    if mode == "cluster":
        assert ext == _uses(EXTENDER_USES, lease)
    else:
        # One pod, one account: the sidecar's rules plus those of the kube-scheduler it sits beside
        # (the built-in roles, bound by reference, are not in this chart's documents).
        assert _uses(EXTENDER_USES, lease) <= ext
        assert ext - _uses(EXTENDER_USES, lease) == {
            ("builtin", "ClusterRole", "system:kube-scheduler", "*", "*"),
            ("builtin", "ClusterRole", "system:volume-scheduler", "*", "*"),
            ("builtin", "Role", "extension-apiserver-authentication-reader", "kube-system", "*"),
            ("coordination.k8s.io", "leases", "create", ns, "*"),
            ("coordination.k8s.io", "leases", "get", ns, "t-topodra-scheduler"),
            ("coordination.k8s.io", "leases", "update", ns, "t-topodra-scheduler"),
        }


# ---- with real tokens -----------------------------------------------------------------------------


@dataclass
class Installed:
    cluster: LocalCluster
    release: str
    namespace: str
    docs: list[dict[str, Any]]

    def token(self, account: str, pod: tuple[str, str] | None = None) -> str:
        argv = ["-n", self.namespace, "create", "token", account, "--duration", "10m"]
        if pod is not None:
            argv += ["--bound-object-kind", "Pod", "--bound-object-name", pod[0], "--bound-object-uid", pod[1]]
        r = kubectl(self.cluster, *argv)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def client(self, token: str) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.cluster.server
        cfg.ssl_ca_cert = str(self.cluster.pki_dir / "ca.crt")
        cfg.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(cfg)


def _install(cluster: LocalCluster, *sets: str) -> Iterator[Installed]:
    from kubernetes import client

    name = f"s{uuid.uuid4().hex[:6]}"
    ns = f"helm-{name}"
    client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": ns}})
    argv = ["install", name, str(CHART), "-n", ns, "--set", "deviceClasses.create=false"]
    for s in (*NO_NODE, *sets):
        argv += ["--set", s]
    try:
        helm(*argv, kubeconfig=cluster.kubeconfig)
        docs = render(*NO_NODE, *sets, "deviceClasses.create=false", release=name, namespace=ns)
        yield Installed(cluster, name, ns, docs)
    finally:
        helm("uninstall", name, "-n", ns, "--wait", "--timeout", "120s", kubeconfig=cluster.kubeconfig, check=False)
        with_grace = kubectl(cluster, "-n", ns, "delete", "pods", "--all", "--grace-period=0", "--force")
        del with_grace
        kubectl(cluster, "delete", "namespace", ns, "--wait=false")


@pytest.fixture(scope="module")
def installed(cluster: LocalCluster) -> Iterator[Installed]:
    yield from _install(cluster)


def _allowed(api: Any, group: str, resource: str, verb: str, namespace: str, name: str) -> tuple[bool, str]:
    from kubernetes import client

    sub = resource.split("/", 1)
    attrs = {"group": group, "resource": sub[0], "verb": verb}
    if len(sub) == 2:
        attrs["subresource"] = sub[1]
    if namespace:
        attrs["namespace"] = namespace
    if name:
        attrs["name"] = name
    review = client.AuthorizationV1Api(api).create_self_subject_access_review(
        {"spec": {"resourceAttributes": attrs}})
    return bool(review.status.allowed), str(review.status.reason or "")


def _concrete(u: Use, lease: str) -> tuple[str, str, str, str, str]:
    lease_ns, lease_name = lease.split("/")
    ns = u.namespace.format(lease_ns=lease_ns)
    name = u.name.format(lease=lease_name)
    return (u.group, u.resource, u.verb, "" if ns == "*" else ns, "" if name == "*" else name)


@pytest.mark.parametrize("account", ["driver", "extender"])
def test_each_account_may_do_what_the_code_does_and_nothing_else(installed: Installed, account: str) -> None:
    api = installed.client(installed.token(f"{installed.release}-topodra-{account}"))
    uses, refused = (DRIVER_USES, DRIVER_REFUSED) if account == "driver" else (EXTENDER_USES, EXTENDER_REFUSED)
    lease = "kube-system/kube-scheduler"
    denied = [c for c in (_concrete(u, lease) for u in uses)
              # cluster-wide rules are checked in some namespace and cluster-wide
              if not _allowed(api, *c)[0] or (c[3] == "" and not _allowed(api, c[0], c[1], c[2], "anywhere", c[4])[0])]
    assert denied == []
    allowed = [r for r in refused if _allowed(api, *r)[0]]
    assert allowed == []


def test_real_requests_with_the_extender_token(installed: Installed) -> None:
    """The same through real calls: its lists work, secrets and other Leases are forbidden."""
    from kubernetes import client

    api = installed.client(installed.token(f"{installed.release}-topodra-extender"))
    core = client.CoreV1Api(api)
    core.list_pod_for_all_namespaces(limit=1)
    client.ResourceV1Api(api).list_resource_slice(limit=1)
    client.CoordinationV1Api(api).list_namespaced_lease("kube-system", field_selector="metadata.name=kube-scheduler")
    calls: list[Callable[[], Any]] = [
        lambda: core.list_namespaced_secret(installed.namespace),
        lambda: client.CoordinationV1Api(api).list_namespaced_lease("kube-system"),
        lambda: core.delete_namespaced_pod("x", installed.namespace),
    ]
    for call in calls:
        with pytest.raises(client.ApiException) as e:
            call()
        assert e.value.status == 403


# ---- the admission policy -------------------------------------------------------------------------


def _node(cluster: LocalCluster, name: str) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    try:  # tainted: nothing else of the session schedules onto it
        core.create_node({"metadata": {"name": name, "labels": {"topodra.dev/vap-test": "true"}},
                          "spec": {"taints": [{"key": "topodra.dev/vap-test", "effect": "NoSchedule"}]}})
    except client.ApiException as e:
        assert e.status == 409, e.body


def _slice(node: str, driver: str = "topodra.dev", suffix: str = "") -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"vap-{node}-{driver.replace('.', '-')}{suffix}"},
            "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1,
                                                                  "resourceSliceCount": 1}, "devices": []}}


def test_driver_token_writes_only_its_own_nodes_slices(installed: Installed) -> None:
    from kubernetes import client

    cluster = installed.cluster
    admin_res = client.ResourceV1Api(cluster.api_client())
    core = client.CoreV1Api(cluster.api_client())
    suffix = uuid.uuid4().hex[:4]
    own, other = f"vap-a-{suffix}", f"vap-b-{suffix}"
    for n in (own, other):
        _node(cluster, n)
    ds = find(installed.docs, "DaemonSet", f"{installed.release}-topodra-driver")
    pod = core.create_namespaced_pod(installed.namespace, {
        "metadata": {"name": "driver-stand-in"},
        "spec": {"nodeName": own, "serviceAccountName": pod_spec(ds)["serviceAccountName"],
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "c", "image": "stand-in:never-run"}]}})
    token = installed.token(pod_spec(ds)["serviceAccountName"], (pod.metadata.name, pod.metadata.uid))
    res = client.ResourceV1Api(installed.client(token))
    created: list[str] = []
    try:
        # The policy takes effect a moment after it is created: wait until a foreign write is denied.
        deadline = time.monotonic() + 30
        while True:
            try:
                obj = res.create_resource_slice(_slice(other, suffix="-probe"))
                admin_res.delete_resource_slice(obj.metadata.name)
            except client.ApiException as e:
                assert e.status in (403, 422), e.body
                assert f"the topodra driver on node {own} may write only ResourceSlices with spec.nodeName {own}" \
                    in e.body, e.body
                assert "ValidatingAdmissionPolicy" in e.body
                break
            assert time.monotonic() < deadline, "the policy never denied a write for another node"
            time.sleep(0.5)
        # Its own node: create, update, delete all pass.
        mine = res.create_resource_slice(_slice(own))
        created.append(mine.metadata.name)
        mine.spec.pool.generation = 2
        res.replace_resource_slice(mine.metadata.name, mine)
        res.delete_resource_slice(mine.metadata.name)
        created.remove(mine.metadata.name)
        # Another node's existing slice (written by someone else) can be neither changed nor deleted.
        theirs = admin_res.create_resource_slice(_slice(other))
        created.append(theirs.metadata.name)
        writes: list[Callable[[], Any]] = [
            lambda: res.delete_resource_slice(theirs.metadata.name),
            lambda: res.replace_resource_slice(theirs.metadata.name, theirs),
        ]
        for call in writes:
            with pytest.raises(client.ApiException) as refused:
                call()
            assert refused.value.status == 403
            assert f"may write only ResourceSlices with spec.nodeName {own}" in refused.value.body
        # Its own node, but another driver's name.
        with pytest.raises(client.ApiException) as other_driver:
            res.create_resource_slice(_slice(own, driver="gpu.other.example"))
        assert "may write only ResourceSlices of driver topodra.dev" in other_driver.value.body
        # A token of the same account that is bound to no pod carries no node: denied.
        unbound = client.ResourceV1Api(installed.client(installed.token(pod_spec(ds)["serviceAccountName"])))
        with pytest.raises(client.ApiException) as no_node:
            unbound.create_resource_slice(_slice(own, suffix="-unbound"))
        assert "only with a token bound to a pod on a node" in no_node.value.body
    finally:
        for name in created:
            admin_res.delete_resource_slice(name)
        for n in (own, other):
            core.delete_node(n)


@pytest.mark.parametrize("sets", [
    (),
    ("fullnameOverride=gpu",),
    ("driver.serviceAccount.name=custom-driver",),
    ("driver.serviceAccount.create=false", "driver.serviceAccount.name=platform-provided"),
])
def test_policy_matches_the_account_the_daemonset_runs_as(sets: tuple[str, ...]) -> None:
    docs = render(*sets, namespace="gpu-system")
    ds = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"].endswith("-driver"))
    account = pod_spec(ds)["serviceAccountName"]
    username = f"system:serviceaccount:{ds['metadata']['namespace']}:{account}"
    vap = find(docs, "ValidatingAdmissionPolicy")
    conditions = vap["spec"]["matchConditions"]
    assert conditions == [{"name": "driver-service-account",
                           "expression": f'request.userInfo.username == "{username}"'}]
    assert find(docs, "ValidatingAdmissionPolicyBinding")["spec"]["policyName"] == vap["metadata"]["name"]
    # The RBAC rules go to the same account.
    crb = next(d for d in docs if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"].endswith("-driver"))
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "gpu-system"}]


def test_installed_policy_matches_the_installed_daemonset(installed: Installed) -> None:
    """Read back from the API: the policy in force names the account of the DaemonSet in force."""
    r = kubectl(installed.cluster, "-n", installed.namespace, "get", "daemonset", "-o", "yaml")
    ds = next(d for d in yaml.safe_load(r.stdout)["items"] if d["metadata"]["name"].endswith("-driver"))
    account = ds["spec"]["template"]["spec"]["serviceAccountName"]
    r = kubectl(installed.cluster, "get", "validatingadmissionpolicy",
                f"{installed.release}-topodra-driver-own-node-slices", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    vap = yaml.safe_load(r.stdout)
    assert f"system:serviceaccount:{installed.namespace}:{account}" in vap["spec"]["matchConditions"][0]["expression"]
    r = kubectl(installed.cluster, "get", "validatingadmissionpolicybinding",
                f"{installed.release}-topodra-driver-own-node-slices", "-o", "yaml")
    assert yaml.safe_load(r.stdout)["spec"]["validationActions"] == ["Deny"]


# ---- pod security ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cluster", "own"])
def test_extender_runs_unprivileged(mode: str) -> None:
    docs = render(f"scheduler.mode={mode}")
    obj = find(docs, "DaemonSet" if mode == "cluster" else "Deployment",
               "t-topodra-extender" if mode == "cluster" else "t-topodra-scheduler")
    names = ["extender"] + (["kube-scheduler"] if mode == "own" else [])
    for n in names:
        sc = container(obj, n)["securityContext"]
        assert sc == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                      "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    for init in pod_spec(obj).get("initContainers", []):  # writes the host config dir: root, nothing more
        sc = init["securityContext"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize(("files", "sets", "privileged"), [
    ((REAL_GPUS,), (), True),
    ((), ("driver.backend=sysfs",), False),
    ((), ("driver.backend=sysfs", "driver.privileged=true"), True),
    ((REAL_GPUS,), ("driver.privileged=false",), False),
])
def test_driver_is_privileged_only_with_nvml(files: tuple[Path, ...], sets: tuple[str, ...],
                                             privileged: bool) -> None:
    ds = find(render(*sets, files=files), "DaemonSet", "t-topodra-driver")
    sc = container(ds, "driver")["securityContext"]
    assert sc["privileged"] is privileged
    if not privileged:
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
    assert pod_spec(ds)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.fixture(scope="module")
def installed_own(cluster: LocalCluster) -> Iterator[Installed]:
    yield from _install(cluster, "scheduler.mode=own")


# What kube-scheduler itself calls (pkg/scheduler informers, leader election on the chart's Lease,
# delegated authentication/authorization of its secure port, binding, DRA allocation).
SCHEDULER_NEEDS = (
    ("", "pods", "list", "", ""), ("", "pods", "watch", "", ""), ("", "pods/binding", "create", "x", ""),
    ("", "pods/status", "patch", "x", ""), ("", "nodes", "list", "", ""), ("", "namespaces", "list", "", ""),
    ("", "persistentvolumeclaims", "list", "", ""), ("", "persistentvolumes", "list", "", ""),
    ("storage.k8s.io", "csinodes", "list", "", ""), ("storage.k8s.io", "storageclasses", "list", "", ""),
    ("policy", "poddisruptionbudgets", "list", "", ""), ("", "events", "create", "x", ""),
    ("events.k8s.io", "events", "create", "x", ""),
    ("resource.k8s.io", "resourceclaims", "list", "", ""),
    ("resource.k8s.io", "resourceclaims/status", "update", "x", ""),
    ("resource.k8s.io", "resourceslices", "list", "", ""), ("resource.k8s.io", "deviceclasses", "list", "", ""),
    ("authentication.k8s.io", "tokenreviews", "create", "", ""),
    ("authorization.k8s.io", "subjectaccessreviews", "create", "", ""),
    ("", "configmaps", "get", "kube-system", "extension-apiserver-authentication"),
    ("coordination.k8s.io", "leases", "create", "{ns}", ""),
    ("coordination.k8s.io", "leases", "get", "{ns}", "{release}-topodra-scheduler"),
    ("coordination.k8s.io", "leases", "update", "{ns}", "{release}-topodra-scheduler"),
)


def test_own_scheduler_account_has_what_kube_scheduler_needs(installed_own: Installed) -> None:
    api = installed_own.client(installed_own.token(f"{installed_own.release}-topodra-scheduler"))
    missing = []
    for g, r, v, ns, name in SCHEDULER_NEEDS:
        ns = ns.format(ns=installed_own.namespace)
        name = name.format(release=installed_own.release)
        ok, _ = _allowed(api, g, r, v, ns, name)
        if not ok:
            missing.append((g, r, v, ns, name))
    assert missing == []
    # The sidecar's rules come with the pod's account.
    for u in EXTENDER_USES:
        c = _concrete(u, f"{installed_own.namespace}/{installed_own.release}-topodra-scheduler")
        assert _allowed(api, *c)[0], c


# ---- client certificates, end to end with kube-scheduler ------------------------------------------


def _token_kubeconfig(cluster: LocalCluster, token: str, path: Path) -> Path:
    import base64

    ca = base64.b64encode((cluster.pki_dir / "ca.crt").read_bytes()).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}]}))
    return path


def _secret_files(cluster: LocalCluster, ns: str, name: str, out: Path) -> dict[str, Path]:
    import base64

    from kubernetes import client

    data = client.CoreV1Api(cluster.api_client()).read_namespaced_secret(name, ns).data
    files = {}
    for key, value in data.items():
        files[key] = out / f"{name}-{key}"
        files[key].write_bytes(base64.b64decode(value))
    return files


def _get(url: str, ca: Path, cert: tuple[Path, Path] | None = None, body: bytes | None = None) -> tuple[int, str]:
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_client_certificate_end_to_end_with_kube_scheduler(cluster: LocalCluster, tmp_path: Path) -> None:
    """Mode own as installed: kube-scheduler with the chart's configuration and the chart's service
    account (leader election on the chart's Lease) calls the extender, run with the chart's flags, over
    TLS with the chart's client certificate; a pod that opts in is bound through it. A caller without
    the certificate is refused."""
    import os
    import subprocess
    import sys

    from kubernetes import client

    from topodra_cli.localcluster.processes import free_port

    sched_name = f"topodra-{uuid.uuid4().hex[:6]}"
    gen = _install(cluster, "scheduler.mode=own", "extender.tls.clientAuth=true", f"scheduler.name={sched_name}")
    inst = next(gen)
    procs: list[subprocess.Popen[bytes]] = []
    node = f"cc-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.api_client())
    try:
        ns, rel = inst.namespace, inst.release
        account = f"{rel}-topodra-scheduler"
        kubeconfig = _token_kubeconfig(cluster, inst.token(account), tmp_path / "sa.kubeconfig")
        # What the pod would mount, taken from the installed objects.
        srv = _secret_files(cluster, ns, f"{rel}-topodra-extender-tls", tmp_path)
        cli = _secret_files(cluster, ns, f"{rel}-topodra-extender-client-tls", tmp_path)
        cm = core.read_namespaced_config_map(f"{rel}-topodra-scheduler-config", ns).data
        cfg = yaml.safe_load(cm["kube-scheduler-config.yaml"])
        got = kubectl(cluster, "-n", ns, "get", "deploy", f"{rel}-topodra-scheduler", "-o", "yaml")
        dep = yaml.safe_load(got.stdout)
        sidecar = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "extender")
        port = free_port()
        ext_config = tmp_path / "extender.yaml"
        ext_config.write_text(core.read_namespaced_config_map(f"{rel}-topodra-extender-config", ns).data["config.yaml"])
        # The pod's paths become this machine's files; every other flag is the chart's.
        replace = {"--port": str(port), "--listen": "127.0.0.1", "--tls-cert": str(srv["tls.crt"]),
                   "--tls-key": str(srv["tls.key"]), "--client-ca": str(cli["ca.crt"]), "--config": str(ext_config)}
        args = []
        for a in sidecar["args"]:
            flag = a.split("=", 1)[0]
            args.append(f"{flag}={replace[flag]}" if flag in replace else a)
        assert f"--follow-lease={ns}/{rel}-topodra-scheduler" in args and f"--scheduler-name={sched_name}" in args
        ext_log = (tmp_path / "extender.log").open("ab")
        procs.append(subprocess.Popen([str(Path(sys.executable).with_name("topodra")), *args,
                                       f"--kubeconfig={kubeconfig}"], stdout=ext_log, stderr=subprocess.STDOUT,
                                      env=dict(os.environ)))
        cfg["clientConnection"]["kubeconfig"] = str(kubeconfig)
        ext = cfg["extenders"][0]
        assert ext["urlPrefix"] == f"https://127.0.0.1:{sidecar_port(sidecar)}/v1"
        ext["urlPrefix"] = f"https://127.0.0.1:{port}/v1"
        ext["tlsConfig"] = {"serverName": ext["tlsConfig"]["serverName"], "caFile": str(srv["ca.crt"]),
                            "certFile": str(cli["tls.crt"]), "keyFile": str(cli["tls.key"])}
        sched_cfg = tmp_path / "sched.yaml"
        sched_cfg.write_text(yaml.safe_dump(cfg))
        sched_log = (tmp_path / "scheduler.log").open("ab")
        procs.append(subprocess.Popen([str(cluster.bin_dir / "kube-scheduler"), f"--config={sched_cfg}",
                                       "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                                       f"--authentication-kubeconfig={kubeconfig}",
                                       f"--authorization-kubeconfig={kubeconfig}", "--v=2"],
                                      stdout=sched_log, stderr=subprocess.STDOUT))
        base = f"https://127.0.0.1:{port}"

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                             for p in (tmp_path / "extender.log", tmp_path / "scheduler.log"))

        # Active once the chart's kube-scheduler leads its Lease (same host name: the extender follows it).
        deadline = time.monotonic() + 90
        while _safe_get(f"{base}/readyz", srv["ca.crt"])[0] != 200:
            assert all(p.poll() is None for p in procs), logs()
            assert time.monotonic() < deadline, "extender never became active:\n" + logs()
            time.sleep(0.5)
        cluster.add_fake_node(node, {"topodra.dev/client-cert-test": node})
        core.create_namespaced_pod(ns, {
            "metadata": {"name": "opted-in"},
            "spec": {"schedulerName": sched_name, "nodeSelector": {"topodra.dev/client-cert-test": node},
                     "containers": [{"name": "c", "image": "stand-in:never-run"}]}})
        deadline = time.monotonic() + 60
        while not (core.read_namespaced_pod("opted-in", ns).spec.node_name):
            assert time.monotonic() < deadline, "pod not bound by the chart's scheduler:\n" + logs()
            time.sleep(0.5)
        assert core.read_namespaced_pod("opted-in", ns).spec.node_name == node
        metrics = _get(f"{base}/metrics", srv["ca.crt"])[1]
        filters = [ln for ln in metrics.splitlines()
                   if ln.startswith("topodra_extender_requests_total") and 'verb="filter"' in ln and 'code="200"' in ln]
        assert filters and float(filters[0].split()[-1]) >= 1, metrics
        # Without the client certificate the verbs are refused (the probes stay open).
        body = b'{"Pod": {"metadata": {"name": "x", "namespace": "y"}}, "NodeNames": []}'
        code, text = _get(f"{base}/v1/filter", srv["ca.crt"], body=body)
        assert code == 403 and "client certificate" in text
        code, _ = _get(f"{base}/v1/filter", srv["ca.crt"], (cli["tls.crt"], cli["tls.key"]), body=body)
        assert code == 200
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        with contextlib.suppress(client.ApiException):
            core.delete_node(node)
        with contextlib.suppress(StopIteration):
            next(gen)


def sidecar_port(container: dict[str, Any]) -> int:
    return int(next(a for a in container["args"] if a.startswith("--port=")).split("=", 1)[1])


def _safe_get(url: str, ca: Path) -> tuple[int, str]:
    try:
        return _get(url, ca)
    except OSError:
        return 0, ""
