"""Checkpoint, restart, reboot, corruption and crash leftovers, in process; CDI versions; health probes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from driver.cdi import CdiStore, ContainerEdits, DeviceNode, NetDevice, Spec
from driver.cdispec import DeviceEnv, build_spec
from driver.checkpoint import STARTED, Checkpoint, ClaimEntry, PreparedDevice, decode, encode
from driver.devicehealth import mark_unhealthy
from driver.kubeletplugin.health import device_health
from driver.kubeletplugin.probes import CRITICAL_XIDS, NvmlProbe
from tests.unit.test_kubeletplugin_support import DRIVER, NODE, Env, env, gpu, nic, topology

__all__ = ["env"]


def _ck(e: Env) -> dict[str, Any]:
    return dict(json.loads((e.cfg.effective_state_dir / "checkpoint.json").read_text()))


def _specs(e: Env) -> list[str]:
    return sorted(p.name for p in e.cdi_dir.iterdir())


def test_restart_keeps_prepared_claims(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        first = k.prepare([c])
    env.stop()
    env.start()
    gets = env.claims.gets
    with env.sim() as k:
        assert k.prepare([c]) == first
        assert env.claims.gets == gets  # answered from the checkpoint
        assert k.unprepare([c]) == {c[1]: ""}
    assert _specs(env) == []


def test_reboot_cleans_stale_specs_and_redoes_prepare(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        first = k.prepare([c])
    env.stop()
    env.cfg.boot_id_file.write_text("boot-2\n")
    env.start()
    assert _specs(env) == []  # stale spec removed at start
    ck = _ck(env)
    assert ck["bootID"] == "boot-2" and ck["claims"][c[1]]["bootID"] == "boot-1"  # entry kept
    gets = env.claims.gets
    with env.sim() as k:
        assert k.prepare([c]) == first
        assert env.claims.gets == gets + 1  # redone from the API
        assert _specs(env) == [f"{DRIVER}-{c[1]}.json"]
        assert _ck(env)["claims"][c[1]]["bootID"] == "boot-2"


def test_reboot_then_unprepare_without_prepare(env: Env) -> None:
    env.start()
    c = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:
        k.prepare([c])
    env.stop()
    env.cfg.boot_id_file.write_text("boot-2\n")
    env.start()
    with env.sim() as k:
        assert k.unprepare([c]) == {c[1]: ""}
    assert _ck(env)["claims"] == {}


def test_corrupt_checkpoint_is_moved_aside_and_claims_recovered(env: Env) -> None:
    env.start()
    a = env.claims.add([("gpu", "gpu-0")])
    b = env.claims.add([("gpu", "gpu-1")])
    with env.sim() as k:
        first = k.prepare([a, b])
    env.stop()
    path = env.cfg.effective_state_dir / "checkpoint.json"
    doc = json.loads(path.read_text())
    doc["claims"][a[1]]["name"] = "tampered"
    path.write_text(json.dumps(doc))
    plugin = env.start()
    assert plugin.metrics.checkpoint_corrupt._value.get() == 1
    assert [(n, r) for n, r, _ in env.claims.events] == [(NODE, "CheckpointCorrupt")]
    aside = list(path.parent.glob("checkpoint.json.corrupt-*"))
    assert len(aside) == 1
    ck = _ck(env)
    assert sorted(ck["claims"]) == sorted([a[1], b[1]])
    assert all(v["recovered"] for v in ck["claims"].values())
    assert len(_specs(env)) == 2
    with env.sim() as k:
        assert k.prepare([a]) == {a[1]: first[a[1]]}  # redone from the API, same answer
        assert "recovered" not in _ck(env)["claims"][a[1]]
        assert k.unprepare([b]) == {b[1]: ""}
    assert _specs(env) == [f"{DRIVER}-{a[1]}.json"]


def test_garbage_checkpoint(env: Env) -> None:
    path = env.cfg.effective_state_dir / "checkpoint.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x01not json")
    env.start()
    assert _ck(env)["claims"] == {}
    assert len(list(path.parent.glob("checkpoint.json.corrupt-*"))) == 1


def test_started_leftover_rolled_back_and_orphans_removed(env: Env) -> None:
    uid = "11111111-2222-4333-8444-555555555555"
    orphan = "99999999-2222-4333-8444-555555555555"
    env.cdi_dir.mkdir(parents=True)
    for u in (uid, orphan):
        (env.cdi_dir / f"{DRIVER}-{u}.json").write_text("{}")
    (env.cdi_dir / f".{DRIVER}-{uid}.json.tmp").write_text("{")
    (env.cdi_dir / "other.dev-abc.json").write_text("{}")  # not ours
    ck = Checkpoint(env.cfg.effective_state_dir / "checkpoint.json", "boot-1")
    dev = PreparedDevice(("gpu",), NODE, "gpu-0", (f"{DRIVER}/device={uid}-gpu-0",))
    ck.put(ClaimEntry(uid, "ns", "c", STARTED, "boot-1", (dev,)))
    env.start()
    assert _specs(env) == ["other.dev-abc.json"]
    assert _ck(env)["claims"] == {}


def test_checkpoint_roundtrip_and_checksum() -> None:
    dev = PreparedDevice(("nic",), NODE, "nic-0", ("k=v",), share_id="s1")
    e = ClaimEntry("u1", "ns", "n", STARTED, "b", (dev,), updated=1.5)
    data = encode("b", [e])
    boot, entries = decode(data)
    assert boot == "b" and entries == {"u1": e}
    assert json.loads(data)["checksum"].startswith("sha256:")


def test_cdi_version_is_the_lowest_needed(tmp_path: Path) -> None:
    base = Spec("topodra.dev/device", (), ContainerEdits())
    assert base.version() == "0.5.0"
    with_net = Spec(
        "topodra.dev/device",
        (),
        ContainerEdits(device_nodes=(DeviceNode("/dev/x"),), net_devices=(NetDevice("eth1", "eth1"),)),
    )
    assert with_net.version() == "1.1.0"
    topo = topology()
    spec, _ = build_spec(
        "topodra.dev/device", "uid-1", [("nic-1", topo.named_devices()["nic-1"])], DeviceEnv(netdevices=True)
    )
    doc = spec.to_json()
    assert doc["cdiVersion"] == "1.1.0"
    assert doc["devices"] == [
        {
            "name": "uid-1-nic-1",
            "containerEdits": {
                "env": ["TOPODRA_DEVICE_NIC_1=0000:81:00.0"],
                "netDevices": [{"hostInterfaceName": "ib1", "name": "ib1"}],
            },
        }
    ]
    assert doc["containerEdits"] == {"env": ["TOPODRA_NET_INTERFACES=ib1"]}
    store = CdiStore(tmp_path, DRIVER)
    store.write("uid-1", spec)
    assert json.loads((tmp_path / f"{DRIVER}-uid-1.json").read_text()) == doc
    assert list(store.claim_uids()) == ["uid-1"]


def test_mark_unhealthy() -> None:
    topo = topology()
    out = mark_unhealthy(topo, {"gpu-1": "x", "nic-0": "y"})
    assert [g.healthy for g in out.gpus] == [True, False]
    assert [n.healthy for n in out.nics] == [False, True]
    assert mark_unhealthy(topo, {}) is topo


class FakeNvml:
    nvmlEventTypeXidCriticalError = 8

    def __init__(self) -> None:
        self.lost: set[str] = set()
        self.events: list[Any] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        if uuid in self.lost:
            raise RuntimeError("GPU is lost")
        return uuid

    def nvmlDeviceRegisterEvents(self, h: str, kind: int, events: object) -> None:
        pass

    def nvmlEventSetWait_v2(self, events: object, timeout: int) -> Any:
        if not self.events:
            raise RuntimeError("Timeout")
        return self.events.pop(0)

    def nvmlDeviceGetUUID(self, h: str) -> bytes:
        return h.encode()


def test_nvml_probe_lost_gpu_and_xid() -> None:
    nv = FakeNvml()
    probe = NvmlProbe(nv)
    topo = topology()
    g0, g1 = gpu(0, 0x10), gpu(1, 0x11)
    assert [h.status for h in device_health(topo, [probe])] == ["Healthy"] * 4
    nv.lost.add(g1.uuid)

    class Ev:
        device = g0.uuid
        eventData = next(iter(sorted(CRITICAL_XIDS)))

    nv.events.append(Ev())
    probe.poll_events()
    hs = {h.device: h for h in device_health(topo, [probe])}
    assert hs["gpu-0"].status == "Unhealthy" and "XID" in hs["gpu-0"].message
    assert hs["gpu-1"].status == "Unhealthy" and "unreachable" in hs["gpu-1"].message
    assert hs["nic-0"].status == "Healthy"


def test_discovery_health_and_link_down() -> None:
    from dataclasses import replace

    topo = topology()
    topo = replace(topo, nics=(replace(nic(0, 0x80, None), link_up=False), nic(1, 0x81, None)))
    hs = {h.device: (h.status, h.message) for h in device_health(topo, [])}
    assert hs["nic-0"] == ("Unhealthy", "link of ib0 is down")


def test_socket_names_and_shortening() -> None:
    from driver.kubeletplugin.paths import MAX_SOCKET_PATH, SocketPaths, registration_socket_name

    p = SocketPaths.build(Path("/var/lib/kubelet"), DRIVER, None)
    assert str(p.registration) == "/var/lib/kubelet/plugins_registry/topodra.dev-reg.sock"
    assert str(p.dra) == "/var/lib/kubelet/plugins/topodra.dev/dra.sock"
    pod = "0f5b6c1e-1d2a-4b3c-8d4e-5f6a7b8c9d0e"
    p = SocketPaths.build(Path("/var/lib/kubelet"), DRIVER, pod)
    assert p.registration.name == f"topodra.dev-{pod}-reg.sock" and len(str(p.registration)) == 91
    assert p.dra.name == f"dra-{pod}.sock" and len(str(p.dra)) == 82
    long_dir = Path("/" + "x" * 40) / "plugins_registry"
    short = registration_socket_name(DRIVER, pod, long_dir)
    assert short.startswith("topodra.dev-") and short.endswith("-reg.sock") and len(short) == len(DRIVER) + 18
    assert len(str(long_dir / short)) <= MAX_SOCKET_PATH
    very_long = Path("/" + "y" * 80) / "plugins_registry"
    shortest = registration_socket_name(DRIVER, pod, very_long)
    assert shortest.startswith("dra-") and len(shortest) == len("dra-") + 16 + len("-reg.sock")
