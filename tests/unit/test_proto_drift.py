"""The committed driver/pb/ modules are exactly what hack/gen-proto.sh makes from proto/, and the
descriptors carry the contract's packages, services, methods and field numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from driver.pb import dra_health_v1_pb2, dra_health_v1alpha1_pb2, dra_v1_pb2, dra_v1beta1_pb2, pluginregistration_v1_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pb"
    out.mkdir()
    (out / "__init__.py").write_text((ROOT / "driver/pb/__init__.py").read_text())
    subprocess.run(
        ["bash", str(ROOT / "hack/gen-proto.sh"), str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    committed = {p.name: p.read_bytes() for p in (ROOT / "driver/pb").iterdir() if p.is_file()}
    fresh = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    for name, data in fresh.items():
        assert committed[name] == data, f"driver/pb/{name} differs from a fresh hack/gen-proto.sh run"


def _fields(msg: object) -> dict[str, tuple[int, int, int]]:
    d = msg.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: (f.number, f.type, int(f.is_repeated)) for f in d.fields}


def test_registration_descriptor() -> None:
    fd = pluginregistration_v1_pb2.DESCRIPTOR
    assert fd.package == "pluginregistration"
    svc = fd.services_by_name["Registration"]
    assert svc.full_name == "pluginregistration.Registration"
    assert [m.name for m in svc.methods] == ["GetInfo", "NotifyRegistrationStatus"]
    assert {k: v[0] for k, v in _fields(pluginregistration_v1_pb2.PluginInfo).items()} == {
        "type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}
    assert {k: v[0] for k, v in _fields(pluginregistration_v1_pb2.RegistrationStatus).items()} == {
        "plugin_registered": 1, "error": 2}


def test_dra_descriptors() -> None:
    base = "k8s.io.kubelet.pkg.apis.dra"
    for mod, pkg in ((dra_v1_pb2, f"{base}.v1"), (dra_v1beta1_pb2, f"{base}.v1beta1")):
        fd = mod.DESCRIPTOR
        assert fd.package == pkg
        svc = fd.services_by_name["DRAPlugin"]
        assert [m.full_name for m in svc.methods] == [f"{pkg}.DRAPlugin.NodePrepareResources",
                                                      f"{pkg}.DRAPlugin.NodeUnprepareResources"]
        assert {k: v[0] for k, v in _fields(mod.Claim).items()} == {"namespace": 1, "uid": 2, "name": 3}
        assert {k: v[0] for k, v in _fields(mod.NodePrepareResourceResponse).items()} == {"devices": 1, "error": 2}
        assert {k: v[0] for k, v in _fields(mod.NodeUnprepareResourceResponse).items()} == {"error": 1}
        dev = {k: v[0] for k, v in _fields(mod.Device).items()}
        want = {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4}
        if mod is dra_v1_pb2:
            want["share_id"] = 5
            assert mod.Device.DESCRIPTOR.fields_by_name["share_id"].has_presence
        assert dev == want


def test_health_descriptors() -> None:
    for mod, pkg in ((dra_health_v1alpha1_pb2, "v1alpha1"), (dra_health_v1_pb2, "v1")):
        fd = mod.DESCRIPTOR
        assert fd.package == pkg
        m = fd.services_by_name["DRAResourceHealth"].methods_by_name["NodeWatchResources"]
        assert m.server_streaming and not m.client_streaming
        assert {k: v[0] for k, v in _fields(mod.DeviceHealth).items()} == {
            "device": 1, "health": 2, "last_updated_time": 3, "health_check_timeout_seconds": 4, "message": 5}
        assert {k: v[0] for k, v in _fields(mod.DeviceIdentifier).items()} == {"pool_name": 1, "device_name": 2}
        assert {v.name: v.number for v in fd.enum_types_by_name["HealthStatus"].values} == {
            "UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}
