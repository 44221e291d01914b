"""The plugin over its real unix sockets, driven by the kubelet-like client (exact method paths)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeaccess.errors import ApiError
from tests.fakes.kubeletsim import KubeletSim, RegistrationRefused, claims_request
from tests.unit.test_kubeletplugin_support import DRIVER, NODE, Env, env, topology

__all__ = ["env"]

GPU0 = "GPU-00000000-1111-2222-3333-444444444444"
GPU1 = "GPU-00000001-1111-2222-3333-444444444444"


def _spec(e: Env, uid: str) -> dict[str, Any]:
    return dict(json.loads((e.cdi_dir / f"{DRIVER}-{uid}.json").read_text()))


def test_registration_info_and_sockets(env: Env) -> None:
    env.start()
    reg = env.root / "plugins_registry" / "topodra.dev-reg.sock"
    dra = env.root / "plugins" / "topodra.dev" / "dra.sock"
    assert reg.is_socket() and dra.is_socket()
    with KubeletSim(env.root) as k:
        info = k.get_info(reg)
        assert (info.type, info.name, info.endpoint) == ("DRAPlugin", "topodra.dev", str(dra))
        assert info.supported_versions == ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth"]
        k.register()
        assert k.version == "v1.DRAPlugin"
    assert env.plugin is not None and env.plugin.registered.is_set()


def test_health_off_is_not_advertised_and_unimplemented(env: Env) -> None:
    env.start(health_enabled=False)
    with env.sim() as k:
        assert k.info is not None
        assert k.info.supported_versions == ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as ei:
            next(k.watch_health("v1alpha1", timeout=5))
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert time.monotonic() - t0 < 2


def test_refused_registration_is_an_error_with_the_reason(env: Env) -> None:
    env.start(registration_retry=0.2)
    reg = env.root / "plugins_registry" / "topodra.dev-reg.sock"
    ino = reg.stat().st_ctime_ns
    with KubeletSim(env.root) as k:
        with pytest.raises(grpc.RpcError) as ei:
            k.notify(reg, False, "RegisterPlugin error -- plugin validation failed with err: boom")
        assert ei.value.code() == grpc.StatusCode.UNKNOWN
        assert "boom" in (ei.value.details() or "")
        assert [r for _, r, _ in env.claims.events] == ["PluginRegistrationRefused"]
    # a fresh registration socket is offered again (kubelets < 1.36 do not retry by themselves)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (not reg.exists() or reg.stat().st_ctime_ns == ino):
        time.sleep(0.05)
    assert reg.is_socket() and reg.stat().st_ctime_ns != ino
    with KubeletSim(env.root) as k, pytest.raises(RegistrationRefused):
        k.register(driver="other.dev")


def test_prepare_writes_exact_cdi_spec_and_answers_by_uid(env: Env) -> None:
    env.start()
    ns, uid, name = env.claims.add([("gpu", "gpu-1"), ("nic/rdma", "nic-0"), ("gpu", "gpu-0")])
    with env.sim() as k:
        res = k.prepare([(ns, uid, name)])
    assert list(res) == [uid]
    assert res[uid].error == ""
    kind = "topodra.dev/device"
    assert [(d.request_names, d.pool_name, d.device_name, d.cdi_device_ids, d.share_id) for d in res[uid].devices] == [
        (["gpu"], NODE, "gpu-1", [f"{kind}={uid}-gpu-1"], None),
        (["nic"], NODE, "nic-0", [f"{kind}={uid}-nic-0"], None),
        (["gpu"], NODE, "gpu-0", [f"{kind}={uid}-gpu-0"], None),
    ]
    dev = env.cfg.dev_root
    assert _spec(env, uid) == {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {
                "name": f"{uid}-gpu-1",
                "containerEdits": {
                    "env": ["TOPODRA_DEVICE_GPU_1=0000:11:00.0"],
                    "deviceNodes": [{"path": "/dev/nvidia1", "hostPath": f"{dev}/nvidia1"}],
                },
            },
            {
                "name": f"{uid}-nic-0",
                "containerEdits": {
                    "env": ["TOPODRA_DEVICE_NIC_0=0000:80:00.0"],
                    "deviceNodes": [{"path": "/dev/infiniband/uverbs0", "hostPath": f"{dev}/infiniband/uverbs0"}],
                },
            },
            {
                "name": f"{uid}-gpu-0",
                "containerEdits": {
                    "env": ["TOPODRA_DEVICE_GPU_0=0000:10:00.0"],
                    "deviceNodes": [{"path": "/dev/nvidia0", "hostPath": f"{dev}/nvidia0"}],
                },
            },
        ],
        "containerEdits": {
            "env": [
                f"NVIDIA_VISIBLE_DEVICES={GPU1},{GPU0}",
                "TOPODRA_NET_INTERFACES=ib0",
                "TOPODRA_RDMA_DEVICES=mlx5_0",
            ],
            "deviceNodes": [
                {"path": "/dev/nvidiactl", "hostPath": f"{dev}/nvidiactl"},
                {"path": "/dev/nvidia-uvm", "hostPath": f"{dev}/nvidia-uvm"},
                {"path": "/dev/infiniband/rdma_cm", "hostPath": f"{dev}/infiniband/rdma_cm"},
            ],
        },
    }
    # NIC status: interface name and hardware address, Ready (written in the background)
    deadline = time.monotonic() + 5
    while not env.claims.status_writes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(env.claims.status_writes) == 1
    (sns, sname, devices) = env.claims.status_writes[0]
    assert (sns, sname) == (ns, name)
    assert [(d["device"], d["networkData"]) for d in devices] == [
        ("nic-0", {"interfaceName": "ib0", "hardwareAddress": "02:00:00:00:00:00"})
    ]
    assert devices[0]["conditions"][0]["type"] == "Ready"
    # no temp files left
    assert sorted(p.name for p in env.cdi_dir.iterdir()) == [f"{DRIVER}-{uid}.json"]


def test_repeat_prepare_same_answer_no_api_call(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        first = k.prepare([c])
        gets = env.claims.gets
        mtime = (env.cdi_dir / f"{DRIVER}-{c[1]}.json").stat().st_mtime_ns
        again = k.prepare([c])
        assert again == first
        assert env.claims.gets == gets
        assert (env.cdi_dir / f"{DRIVER}-{c[1]}.json").stat().st_mtime_ns == mtime
        # the spec went missing (e.g. /var/run/cdi wiped): it is written again, same ids
        (env.cdi_dir / f"{DRIVER}-{c[1]}.json").unlink()
        assert k.prepare([c]) == first
        assert (env.cdi_dir / f"{DRIVER}-{c[1]}.json").exists()


def test_v1beta1_and_share_id(env: Env) -> None:
    env.start()
    c = env.claims.add(
        [("gpu", "gpu-0")],
        extra=[{"request": "nic", "driver": DRIVER, "pool": NODE, "device": "nic-1", "shareID": "abc-123"}],
    )
    with env.sim() as k:
        v1 = k.prepare([c], version="v1.DRAPlugin")
        beta = k.prepare([c], version="v1beta1.DRAPlugin")
    assert [d.share_id for d in v1[c[1]].devices] == [None, "abc-123"]
    assert [d.share_id for d in beta[c[1]].devices] == [None, None]
    assert [d.device_name for d in beta[c[1]].devices] == ["gpu-0", "nic-1"]


def test_bad_claims_get_their_own_errors(env: Env) -> None:
    env.start()
    good = env.claims.add([("gpu", "gpu-0")])
    replaced = env.claims.add([("gpu", "gpu-1")])
    unallocated = env.claims.add([], allocated=False)
    unknown_dev = env.claims.add([("gpu", "gpu-7")])
    other_pool = env.claims.add([("gpu", "gpu-0")], pool="node-b")
    foreign = env.claims.add([("gpu", "gpu-0")], driver="other.dev")
    missing = ("ns", "1f0e4b3a-0000-4000-8000-000000000000", "gone")
    with env.sim() as k:
        res = k.prepare(
            [good, (replaced[0], "0a0a0a0a-0000-4000-8000-000000000000", replaced[2]), unallocated, unknown_dev,
             other_pool, foreign, missing]
        )
    assert len(res) == 7
    assert res[good[1]].error == "" and len(res[good[1]].devices) == 1
    assert "got replaced" in res["0a0a0a0a-0000-4000-8000-000000000000"].error
    assert res[unallocated[1]].error == f"claim ns/{unallocated[2]} not allocated"
    assert "unknown device node-a/gpu-7" in res[unknown_dev[1]].error
    assert "not in this node's pool" in res[other_pool[1]].error
    assert res[foreign[1]].error == "" and res[foreign[1]].devices == []
    assert res[missing[1]].error.startswith("retrieve claim ns/gone: HTTP 404")
    assert sorted(p.name for p in env.cdi_dir.iterdir()) == [f"{DRIVER}-{good[1]}.json"]


def test_missing_device_node_is_a_clear_error(env: Env) -> None:
    (env.cfg.dev_root / "nvidia1").unlink()
    env.start()
    c = env.claims.add([("gpu", "gpu-1")])
    with env.sim() as k:
        res = k.prepare([c])
    assert res[c[1]].error == f"device gpu-1: device node {env.cfg.dev_root}/nvidia1 does not exist"
    assert list(env.cdi_dir.iterdir()) == []


def test_unprepare_removes_spec_and_unknown_is_success(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        k.prepare([c])
        unknown = ("ns", "deadbeef-0000-4000-8000-000000000000", "x")
        assert k.unprepare([c, unknown]) == {c[1]: "", unknown[1]: ""}
        assert list(env.cdi_dir.iterdir()) == []
        ck = json.loads((env.cfg.effective_state_dir / "checkpoint.json").read_text())
        assert ck["claims"] == {}
        # the claim is gone from the API too: still fine
        env.claims.claims.clear()
        assert k.unprepare([c], version="v1beta1.DRAPlugin") == {c[1]: ""}


def test_api_errors_are_per_claim(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    env.claims.fail_get = ApiError(0, "connection refused")
    with env.sim() as k:
        res = k.prepare([c])
    assert res[c[1]].error == f"retrieve claim {c[0]}/{c[2]}: connection refused"


def test_parallel_claims_and_same_claim_serialized(env: Env) -> None:
    env.start()
    claims = [env.claims.add([("gpu", f"gpu-{i % 2}")]) for i in range(16)]
    results: list[Any] = []
    with env.sim() as k:
        def run(c: tuple[str, str, str]) -> None:
            results.append(k.prepare([c]))

        threads = [threading.Thread(target=run, args=(c,)) for c in claims + claims]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert all(not r[uid].error for r in results for uid in r)
    assert len(list(env.cdi_dir.glob("*.json"))) == 16
    ck = json.loads((env.cfg.effective_state_dir / "checkpoint.json").read_text())
    assert sorted(ck["claims"]) == sorted(c[1] for c in claims)
    assert {v["state"] for v in ck["claims"].values()} == {"PrepareCompleted"}


def test_health_stream_full_list_and_changes(env: Env) -> None:
    env.start()
    with env.sim() as k:
        stream = k.watch_health("v1alpha1", timeout=10)
        first = next(stream)
        assert [(h.pool, h.device, h.health) for h in first] == [
            (NODE, "gpu-0", "Healthy"),
            (NODE, "gpu-1", "Healthy"),
            (NODE, "nic-0", "Healthy"),
            (NODE, "nic-1", "Healthy"),
        ]
        assert all(h.timeout_seconds >= 30 for h in first)
        # NIC link goes down: the next update says so, still the full list
        net = env.cfg.sysfs_root / "class" / "net" / "ib1"
        net.mkdir(parents=True)
        (net / "operstate").write_text("down\n")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            upd = next(stream)
            if any(h.health == "Unhealthy" for h in upd):
                break
        assert len(upd) == 4
        bad = [(h.device, h.message) for h in upd if h.health == "Unhealthy"]
        assert bad == [("nic-1", "link of ib1 is down")]
        assert env.plugin is not None and env.plugin.unhealthy_devices() == {"nic-1": "link of ib1 is down"}
        # v1 health path answers too
        v1 = next(k.watch_health("v1", timeout=5))
        assert len(v1) == 4


def test_stop_removes_sockets_and_finishes_inflight(env: Env) -> None:
    plugin = env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    slow = threading.Event()
    orig = env.claims.get_claim

    def slow_get(ns: str, name: str) -> dict[str, Any]:
        slow.set()
        time.sleep(0.5)
        return orig(ns, name)

    env.claims.get_claim = slow_get  # type: ignore[method-assign,assignment]
    out: list[Any] = []
    with env.sim() as k:
        t = threading.Thread(target=lambda: out.append(k.prepare([c])))
        t.start()
        assert slow.wait(5)
        env.stop()
        t.join(5)
    assert out and out[0][c[1]].error == ""
    assert not plugin.paths.registration.exists()
    assert not plugin.paths.dra.exists()


def test_stale_sockets_are_replaced(env: Env) -> None:
    reg = env.root / "plugins_registry" / "topodra.dev-reg.sock"
    dra = env.root / "plugins" / "topodra.dev" / "dra.sock"
    for p in (reg, dra):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("stale")
    other = env.root / "plugins_registry" / "other.dev-reg.sock"
    other.write_text("not ours")
    env.start()
    assert reg.is_socket() and dra.is_socket()
    assert other.read_text() == "not ours"
    with env.sim() as k:
        assert k.info is not None


def test_rolling_update_socket_names(env: Env) -> None:
    pod = "8f6b1c2e-1111-4222-8333-944444444444"
    plugin = env.start(pod_uid=pod)
    assert plugin.paths.registration.name == f"topodra.dev-{pod}-reg.sock"
    assert plugin.paths.dra.name == f"dra-{pod}.sock"
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        assert k.prepare([c])[c[1]].error == ""
        assert k.unprepare([c]) == {c[1]: ""}
    assert (plugin.paths.plugin_dir / "serialize.lock").exists()


def test_garbage_bytes_get_a_grpc_error_not_a_crash(env: Env) -> None:
    env.start()
    with env.sim() as k:
        with pytest.raises(grpc.RpcError) as ei:
            k.prepare_raw(b"\xff\xff\xff")
        assert ei.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
        c = env.claims.add([("gpu", "gpu-0")])
        assert k.prepare([c])[c[1]].error == ""
        # invalid UIDs (path tricks) are refused per claim
        res = k.prepare([("ns", "../../etc/passwd", "x")])
        assert "invalid claim UID" in res["../../etc/passwd"].error
        assert claims_request([]) == b""
        assert k.prepare([]) == {}


def test_topology_is_read_per_call(env: Env, tmp_path: Path) -> None:
    env.start()
    env.topo[0] = topology(n_gpus=1)
    c = env.claims.add([("gpu", "gpu-1")])
    with env.sim() as k:
        assert "unknown device" in k.prepare([c])[c[1]].error


def test_rolling_update_two_instances_share_state(env: Env) -> None:
    from dataclasses import replace

    from driver.kubeletplugin.runner import KubeletPlugin

    old = env.start(pod_uid="aaaaaaaa-1111-4222-8333-944444444444")
    new_cfg = replace(env.cfg, pod_uid="bbbbbbbb-1111-4222-8333-944444444444")
    new = KubeletPlugin(new_cfg, lambda: env.topo[0], claims_api=env.claims)
    new.start()
    try:
        assert old.paths.registration.exists() and new.paths.registration.exists()
        c = env.claims.add([("gpu", "gpu-0")])
        with KubeletSim(env.root) as k_old, KubeletSim(env.root) as k_new:
            k_old.register(old.paths.registration)
            k_new.register(new.paths.registration)
            first = k_old.prepare([c])
            assert k_new.prepare([c]) == first  # the new pod knows what the old one prepared
            assert k_new.unprepare([c]) == {c[1]: ""}
            assert list(env.cdi_dir.glob("*.json")) == []
            assert k_old.unprepare([c]) == {c[1]: ""}
            assert old.checkpoint.get(c[1]) is None
    finally:
        new.stop(1.0)
    # each pod removed only its own sockets
    assert not new.paths.registration.exists() and old.paths.registration.exists()
