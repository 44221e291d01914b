"""The topodra image built without a container engine: reproducible, what it holds, and that it really runs.

The image is built once for the module (Debian packages and wheels come from their caches after the first
run). The tests that run it import it into a real node's containerd (kubelet + containerd as processes, as in
test_real_node.py) and run it both with `ctr run` and as pods, root and nonroot with a read-only root.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from topodra_cli import __version__
from topodra_cli.imagebuild import (
    NONROOT_UID,
    REPO,
    BuildResult,
    build,
    build_binary_image,
    copy_sources,
    load_into_nodes,
    write_rootfs,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot
from topodra_cli.localcluster.images import Image, _is_static, manifest_digest
from topodra_cli.localcluster.podspec import real_node_pod
from topodra_cli.localcluster.realnode import RealNode

_CANNOT = machine_cannot()
NODE_MARKS = (pytest.mark.e2e, pytest.mark.cluster,
              pytest.mark.skipif(bool(_CANNOT), reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))
F = TypeVar("F", bound=Callable[..., None])


def on_real_node(test: F) -> F:
    for mark in NODE_MARKS:
        test = mark(test)
    return test
K8S_VERSION = "v1.37.2"
IMPORTS = "import grpc, orjson, kubernetes, structlog, prometheus_client; print('imports-ok')"
# Every module of topodra imports in the image (a missing wheel or library would show here, not in a pod).
IMPORT_ALL = """
import importlib, pkgutil
bad = []
for pkg in ("driver", "scheduler_plugin", "kubeaccess", "topodra_cli"):
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            bad.append(f"{info.name}: {e!r}")
print("\\n".join(bad) or "all-modules-ok")
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the sources: the shared working tree may change between two builds."""
    snap = tmp_path_factory.mktemp("src")
    copy_sources(REPO, snap)
    return snap


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, source: Path) -> BuildResult:
    return build(tmp_path_factory.mktemp("image"), source=source)


def _blobs(tarball: Path) -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
    """(manifest, config, layer blobs) of a one-image OCI layout tarball."""
    with tarfile.open(tarball) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]
    desc = json.loads(files["index.json"])["manifests"][0]
    manifest = json.loads(files["blobs/sha256/" + desc["digest"].split(":")[1]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    layers = []
    for la in manifest["layers"]:
        blob = files["blobs/sha256/" + la["digest"].split(":")[1]]
        assert hashlib.sha256(blob).hexdigest() == la["digest"].split(":")[1]
        layers.append(blob)  # gzip or plain: tarfile detects which
    return manifest, config, layers


def _members(layer_blob: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer_blob)) as t:
        return {m.name: m for m in t.getmembers()}


def _read(layer_blob: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(layer_blob)) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read().decode()


# ---- the image file ------------------------------------------------------------------------------------


def test_same_inputs_give_the_same_digest(built: BuildResult, source: Path, tmp_path: Path) -> None:
    again = build(tmp_path, source=source)
    assert again.digest == built.digest
    assert again.image.tarball.read_bytes() == built.image.tarball.read_bytes()


def test_config_users_and_contents(built: BuildResult) -> None:
    assert built.image.name == f"ghcr.io/topodra/topodra:{__version__}"
    _manifest, config, layers = _blobs(built.image.tarball)
    cfg = config["config"]
    assert cfg["Entrypoint"] == ["topodra"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PATH"].split(":")[0] == "/usr/local/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    base, deps, app = layers
    passwd = _read(base, "etc/passwd")
    assert "root:x:0:0:" in passwd and f"nonroot:x:{NONROOT_UID}:{NONROOT_UID}:" in passwd
    names = {n for la in layers for n in _members(la)}
    assert {"usr/bin/python3.11", "bin/sh", "bin/busybox", "usr/local/bin/topodra"} <= names
    assert _members(base)["home/nonroot"].uid == NONROOT_UID
    assert _members(base)["tmp"].mode == 0o1777
    # No compilers, pip or package managers; only the image's own topodra dist-info.
    for bad in ("usr/bin/gcc", "usr/bin/apt-get", "usr/bin/dpkg", "bin/dpkg", "usr/bin/pip",
                "usr/local/lib/python3.11/dist-packages/pip"):
        assert bad not in names
    assert not any(n.startswith("usr/local/lib/python3.11/dist-packages/setuptools") for n in names)
    # Every .py of ours ships with its unchecked-hash pyc (nothing to compile at start on a read-only root).
    pyc = _members(app)["usr/local/lib/python3.11/dist-packages/topodra_cli/__pycache__/main.cpython-311.pyc"]
    with tarfile.open(fileobj=io.BytesIO(app)) as t:
        f = t.extractfile(pyc)
        assert f is not None
        flags = int.from_bytes(f.read(8)[4:8], "little")
    assert flags == 0b01  # hash-based, not checked
    for la in layers:
        for m in _members(la).values():
            assert m.mtime == 0
            assert m.uid in (0, NONROOT_UID) and m.gid in (0, NONROOT_UID)
    assert deps != app


def test_rootfs_for_the_dockerfile_holds_the_same_files(built: BuildResult, source: Path, tmp_path: Path) -> None:
    """`imagebuild rootfs` (the Dockerfile's build stage) writes what the image's layers hold, file for file."""
    write_rootfs(tmp_path / "rootfs", source=source)
    _manifest, _config, layers = _blobs(built.image.tarball)
    want: dict[str, str] = {}
    for la in layers:
        with tarfile.open(fileobj=io.BytesIO(la)) as t:
            for m in t.getmembers():
                f = t.extractfile(m) if m.isfile() else None
                link = "link:" + m.linkname if m.issym() else ""
                want[m.name] = hashlib.sha256(f.read()).hexdigest() if f else link
    got: dict[str, str] = {}
    root = tmp_path / "rootfs"
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        got[rel] = ("link:" + os.readlink(p) if p.is_symlink() else
                    hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
    assert got == want
    assert (root / "home/nonroot").stat().st_uid == NONROOT_UID


def test_binary_image_rejects_a_dynamic_binary(tmp_path: Path) -> None:
    from topodra_cli.localcluster.processes import ClusterError

    with pytest.raises(ClusterError, match="statically linked"):
        build_binary_image("example.local/ls:1", Path("/bin/ls"), tmp_path)


# ---- on a real node ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node(cluster: LocalCluster) -> Iterator[RealNode]:
    n = RealNode(cluster, default_node_name())
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def loaded(node: RealNode, built: BuildResult) -> Image:
    node.load_image(built.image)
    return built.image


def _ctr_run(node: RealNode, image: str, *argv: str, extra: tuple[str, ...] = ()) -> str:
    cid = f"img-{uuid.uuid4().hex[:8]}"
    out = node.ctr("run", "--rm", *extra, image, cid, *argv, timeout=120)
    return out.stdout


@on_real_node
def test_image_runs_with_ctr(node: RealNode, loaded: Image) -> None:
    listed = node.ctr("images", "ls", f"name=={loaded.name}").stdout
    assert manifest_digest(loaded.tarball) in listed  # imported under its name, from index.json
    assert __version__ in _ctr_run(node, loaded.name, "topodra", "version")
    assert "--node-name" in _ctr_run(node, loaded.name, "topodra", "driver", "--help")
    assert "usage" in _ctr_run(node, loaded.name, "topodra", "extender", "--help").lower()
    assert "imports-ok" in _ctr_run(node, loaded.name, "python3", "-c", IMPORTS)
    assert _ctr_run(node, loaded.name, "python3", "-c", IMPORT_ALL).strip() == "all-modules-ok"
    # As nonroot, with the root filesystem read-only: nothing is written at start.
    out = _ctr_run(node, loaded.name, "sh", "-c", f"id -u; topodra version; python3 -c \"{IMPORTS}\"",
                   extra=("--user", str(NONROOT_UID), "--read-only"))
    assert out.split()[0] == str(NONROOT_UID) and "imports-ok" in out and __version__ in out
    out = _ctr_run(node, loaded.name, "sh", "-c", "touch /tmp/x /home/nonroot/y && echo writable",
                   extra=("--user", str(NONROOT_UID)))
    assert "writable" in out
    # Start to `topodra version` output, the whole `ctr run` (create, start, Python, exit): median of 5.
    times = []
    for _ in range(5):
        t0 = time.monotonic()
        assert __version__ in _ctr_run(node, loaded.name, "topodra", "version")
        times.append(time.monotonic() - t0)
    median = statistics.median(times)
    print(f"ctr run -> topodra version: median {median:.2f}s of {[round(t, 2) for t in times]}")
    assert median < 15


@on_real_node
def test_image_runs_as_pods(cluster: LocalCluster, node: RealNode, loaded: Image, namespace: str) -> None:
    from kubernetes import client

    from tests.e2e.test_real_node import wait_pod

    core = client.CoreV1Api(cluster.api_client())
    # The image's entrypoint with only `args`, as the chart's containers use it.
    version_pod = real_node_pod("version", "", node_name=node.name, image=loaded.name)
    main = version_pod["spec"]["containers"][0]
    del main["command"]
    main["args"] = ["version"]
    core.create_namespaced_pod(namespace, version_pod)
    # nonroot, read-only root, no capabilities: how the chart runs the extender.
    checks = (f"id -u; topodra driver --help >/dev/null && topodra extender --help >/dev/null"
              f" && python3 -c \"{IMPORTS}\"")
    locked = real_node_pod("locked", checks, node_name=node.name, image=loaded.name)
    locked["spec"]["containers"][0]["securityContext"] = {
        "runAsUser": NONROOT_UID, "runAsGroup": NONROOT_UID, "runAsNonRoot": True,
        "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    }
    core.create_namespaced_pod(namespace, locked)
    wait_pod(cluster, node, namespace, "version", ("Succeeded",), timeout=120)
    assert __version__ in core.read_namespaced_pod_log("version", namespace)
    wait_pod(cluster, node, namespace, "locked", ("Succeeded",), timeout=120)
    log = core.read_namespaced_pod_log("locked", namespace)
    assert log.split()[0] == str(NONROOT_UID) and "imports-ok" in log


@on_real_node
def test_kube_scheduler_binary_image_runs(cluster: LocalCluster, node: RealNode, tmp_path: Path) -> None:
    binary = cluster.bin_dir / "kube-scheduler"
    assert _is_static(binary)
    image = build_binary_image(f"registry.k8s.io/kube-scheduler:{K8S_VERSION}", binary, tmp_path)
    again = build_binary_image(f"registry.k8s.io/kube-scheduler:{K8S_VERSION}", binary, tmp_path / "again")
    assert image.tarball.read_bytes() == again.tarball.read_bytes()
    # As `make image` loads images: into every running real node of the cluster.
    assert node.name in load_into_nodes([image], cluster.dir)
    out = _ctr_run(node, image.name, "kube-scheduler", "--version")
    assert K8S_VERSION in out


def _epoch(rfc3339nano: str) -> float:
    """A kubelet log timestamp (UTC, trailing zeros of the fraction trimmed) as seconds since the epoch."""
    base, _, frac = rfc3339nano.rstrip("Z").partition(".")
    whole = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.UTC).timestamp()
    return whole + float("0." + (frac or "0"))


@on_real_node
def test_driver_in_the_image_registers_with_the_kubelet(
    cluster: LocalCluster, node: RealNode, loaded: Image, namespace: str
) -> None:
    """The driver as a pod of the image (file backend, hostPath mounts as the chart uses): it registers with the
    node's kubelet and publishes the node's slices. Prints the time from container start to registered."""
    from kubernetes import client

    from kubeaccess.sync import KubeClient
    from tests.e2e.test_real_node import TOPOLOGY, wait_until
    from tests.fakes.kube import node_slices

    conf = Path(tempfile.mkdtemp(prefix="timg-", dir="/tmp"))
    shutil.copyfile(cluster.kubeconfig, conf / "kubeconfig")
    (conf / "topology.yaml").write_text(TOPOLOGY.replace("NODE", node.name))
    state = conf / "state"
    state.mkdir()
    argv = ["topodra", "driver", "--node-name", node.name, "--kubeconfig", str(conf / "kubeconfig"),
            "--backend", "file", "--topology", str(conf / "topology.yaml"), "--rediscover-interval", "0",
            "--kubelet-root-dir", str(node.kubelet_root), "--cdi-dir", str(node.cdi_dir), "--state-dir", str(state)]
    # The kubelet stamps each log line as it arrives: `echo` marks the container's start.
    pod = real_node_pod("driver", "echo started; exec " + " ".join(argv), node_name=node.name, image=loaded.name)
    paths = {"conf": conf, "kubelet": node.kubelet_root, "cdi": node.cdi_dir}
    pod["spec"]["volumes"] = [{"name": n, "hostPath": {"path": str(p), "type": "Directory"}} for n, p in paths.items()]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": n, "mountPath": str(p)} for n, p in paths.items()]
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(namespace, pod)
    try:
        def registered() -> bool:
            try:
                return '"plugin_registered"' in (core.read_namespaced_pod_log("driver", namespace) or "")
            except client.ApiException:
                return False

        wait_until(registered, 90, "the driver pod to register with the kubelet", node)
        lines = core.read_namespaced_pod_log("driver", namespace, timestamps=True).splitlines()
        assert lines[0].split()[1] == "started"
        started = _epoch(lines[0].split()[0])
        stamp = next(ln.split()[0] for ln in lines if '"plugin_registered"' in ln)
        print(f"driver container start -> registered with the kubelet: {_epoch(stamp) - started:.2f}s")
        kube = KubeClient.load(str(cluster.kubeconfig))

        def devices() -> list[str]:
            return sorted(d["name"] for s in node_slices(kube, node.name) for d in s["spec"].get("devices") or ())

        wait_until(lambda: devices() == ["gpu-0", "gpu-1", "nic-0"], 60, "the node's ResourceSlices", node)
        assert (node.kubelet_root / "plugins_registry").is_dir()
    finally:
        core.delete_namespaced_pod("driver", namespace, grace_period_seconds=5)
        wait_until(lambda: not node.container_tasks(), 60, "the driver container to stop", node)
        shutil.rmtree(conf, ignore_errors=True)
