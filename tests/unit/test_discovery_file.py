"""The file backend: parsing, defaults, node sets, and errors that name node, device and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.discovery import BackendConfig, DiscoveryError, TopologyFileError, discover, discover_fleet
from driver.discovery.filebackend import parse_topology

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "deploy" / "examples" / "topology-demo.yaml"

ONE = """
nodes:
- name: node-a
  labels: {topodra.dev/rack: r1}
  pcieRoots: {pci0000:40: {numaNode: 1}}
  gpus:
  - {pciBusID: "0000:4b:00.0", pcieRoot: pci0000:40, memory: 40Gi, clique: "abc.1", healthy: false}
  - {pciBusID: "0000:4A:00.0", pcieRoot: pci0000:40, numaNode: 0, uuid: GPU-x, index: 7, minor: 3}
  nics:
  - {pciBusID: "0000:4c:00.0", pcieRoot: pci0000:40, ifName: ib0, mac: "02:00:00:00:00:0A", rdmaDevice: mlx5_0}
"""


def test_demo_file_shape() -> None:
    nodes = discover_fleet(DEMO)
    assert [n.node_name for n in nodes] == ["demo-0000", "demo-0001", "demo-0002", "demo-0003"]
    racks = [n.labels["topology.kubernetes.io/rack"] for n in nodes]
    assert racks == ["rack-0", "rack-0", "rack-1", "rack-1"]
    for n in nodes:  # the well-known topology labels the extender reads by default
        assert n.labels["topology.kubernetes.io/zone"] == "zone-a"
        assert n.labels["network.topology.kubernetes.io/block"] == "block-0"
        assert n.labels["nvidia.com/gpu.clique"] == n.gpus[0].clique_id  # label = the GPUs' clique attribute
    for n in nodes:
        assert len(n.gpus) == 8 and len(n.nics) == 4
        assert {g.pcie_root for g in n.gpus} == {"pci0000:00", "pci0000:40", "pci0000:80", "pci0000:c0"}
        assert {g.numa_node for g in n.gpus} == {0, 1}
        assert {n2.pcie_root for n2 in n.nics} == {g.pcie_root for g in n.gpus}
        assert len({g.clique_id for g in n.gpus}) == 1
    assert nodes[0].gpus[0].clique_id != nodes[2].gpus[0].clique_id
    # identities are deterministic and unique
    again = discover_fleet(DEMO)
    assert [g.uuid for g in again[0].gpus] == [g.uuid for g in nodes[0].gpus]
    assert len({g.uuid for n in nodes for g in n.gpus}) == 32
    assert len({x.mac for n in nodes for x in n.nics}) == 16


def test_fields_defaults_and_order() -> None:
    (node,) = parse_topology(ONE)
    g0, g1 = node.gpus  # sorted by PCI address
    assert g0.pci_bus_id == "0000:4a:00.0" and g0.uuid == "GPU-x" and g0.index == 7 and g0.minor == 3
    assert g0.numa_node == 0  # explicit beats the root's NUMA node
    assert g1.numa_node == 1 and g1.memory_bytes == 40 * 2**30 and g1.clique_id == "abc.1"
    assert g1.index == 1 and g1.minor == 1 and not g1.healthy
    assert g1.product_name == "NVIDIA H100 80GB HBM3"  # built-in defaults
    (nic,) = node.nics
    assert nic.mac == "02:00:00:00:00:0a" and nic.rdma_device == "mlx5_0" and nic.numa_node == 1
    assert node.named_devices()["gpu-0"].pci_bus_id == "0000:4a:00.0"


def test_discover_picks_node(tmp_path: Path) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(ONE)
    topo = discover(BackendConfig(node_name="node-a", backends=("file",), topology_file=f))
    assert topo.node_name == "node-a" and len(topo.gpus) == 2
    with pytest.raises(DiscoveryError, match="no node named 'node-b'"):
        discover(BackendConfig(node_name="node-b", backends=("file",), topology_file=f))


def test_node_set_formatting() -> None:
    text = """
nodeSets:
- namePattern: "n-{i:03d}"
  count: 5
  rackSize: 2
  blockSize: 4
  labels: {rack: "r{rack}", block: "b{block}"}
  template:
    gpus: [{pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, clique: "c.{rack}"}]
"""
    nodes = parse_topology(text)
    assert [n.node_name for n in nodes] == ["n-000", "n-001", "n-002", "n-003", "n-004"]
    assert [n.labels["rack"] for n in nodes] == ["r0", "r0", "r1", "r1", "r2"]
    assert [n.labels["block"] for n in nodes] == ["b0", "b0", "b0", "b0", "b1"]
    assert [n.gpus[0].clique_id for n in nodes] == ["c.0", "c.0", "c.1", "c.1", "c.2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nodes: [{name: a, gpus: [{pciBusID: '0000:01:00.0', pcieRoot: pci0000:00, memory: lots}]}]",
         "node 'a', gpus[0] (0000:01:00.0), field 'memory'"),
        (
            "nodes: [{name: a, gpus: [{pciBusID: '0000:01:00.0'}]}]",
            "node 'a', gpus[0] (0000:01:00.0), field 'pcieRoot'",
        ),
        ("nodes: [{name: a, nics: [{pciBusID: 'zz', pcieRoot: pci0000:00}]}]", "node 'a', nics[0], field 'pciBusID'"),
        ("nodes: [{name: a, nics: [{pciBusID: '0000:01:00.0', pcieRoot: pci0000:00, mtu: big}]}]",
         "node 'a', nics[0] (0000:01:00.0), field 'mtu'"),
        ("nodes: [{name: a, gpus: [{pciBusID: '0000:01:00.0', pcieRoot: pci0000:00, colour: red}]}]",
         "field 'colour': unknown field"),
        ("nodes: [{name: a, gpus: [{pciBusID: 0000:00:00.0, pcieRoot: pci0000:00}]}]", "quoted PCI address"),
        ("nodes: [{name: a}, {name: a}]", "repeated: a"),
        ("nodes: [{labels: {}}]", "non-empty string 'name'"),
        ("nodes: [{name: a, gpus: [{pciBusID: '0000:01:00.0', pcieRoot: nope}]}]", "field 'pcieRoot'"),
        ("nodes: [{name: a, gpus: [{pciBusID: '0000:01:00.0', pcieRoot: pci0000:00, driverVersion: x.y}]}]",
         "field 'driverVersion'"),
        ("nodes: [{name: a, nics: [{pciBusID: '0000:01:00.0', pcieRoot: pci0000:00, sriov: vf}]}]",
         "field 'sriovPF'"),
        ("nodes: [[1]]", "nodes[0]"),
        ("nodes: {a: 1}", "field 'nodes': must be a list"),
        (":\n  - [", "not valid YAML"),
        ("- 1", "top level must be a mapping"),
        ("nodeSets: [{namePattern: x, count: 1}]", "namePattern"),
    ],
)
def test_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(TopologyFileError) as e:
        parse_topology(text, "t.yaml")
    assert message in str(e.value)
    assert str(e.value).startswith("topology file t.yaml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyFileError, match="cannot read"):
        discover_fleet(tmp_path / "missing.yaml")


def test_backend_config_checks(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="unknown backend"):
        BackendConfig(node_name="a", backends=("gpu",))
    with pytest.raises(DiscoveryError, match="needs a topology file"):
        BackendConfig(node_name="a", backends=("file",))
    with pytest.raises(DiscoveryError, match="cannot be combined"):
        BackendConfig(node_name="a", backends=("file", "sysfs"), topology_file=tmp_path)


def test_kind_topology_matches_kind_cluster() -> None:
    """deploy/examples/topology-kind.yaml describes exactly the workers of hack/kind/cluster.yaml."""
    import yaml

    cluster = yaml.safe_load((ROOT / "hack" / "kind" / "cluster.yaml").read_text())
    workers = [n for n in cluster["nodes"] if n["role"] == "worker"]
    # kind names workers <cluster>-worker, <cluster>-worker2, ... (cluster name "kind" by default)
    names = ["kind-worker" + (str(i + 1) if i else "") for i in range(len(workers))]
    nodes = discover_fleet(ROOT / "deploy" / "examples" / "topology-kind.yaml")
    assert [n.node_name for n in nodes] == names
    for node, worker in zip(nodes, workers, strict=True):
        for k, v in (worker.get("labels") or {}).items():
            assert node.labels[k] == v
        assert node.labels["nvidia.com/gpu.clique"] == node.gpus[0].clique_id
        assert len(node.gpus) == 4 and len(node.nics) == 2
        roots = {g.pcie_root for g in node.gpus}
        assert roots == {n.pcie_root for n in node.nics}  # every root has an aligned GPU-NIC pair
    assert {g.uuid for g in nodes[0].gpus}.isdisjoint({g.uuid for g in nodes[1].gpus})
