"""Feasibility and reasons: counts, matchAttribute, required alignment, allocations, CEL limits."""

from __future__ import annotations

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import run_filter
from scheduler_plugin.model import parse_pod
from tests.unit.test_extender_support import add_node, claim, dev, make_index, pod
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()
# gpu-0 / nic-0 sit on roots without a partner; gpu-1 + nic-1 share pci0000:80 (as in the driver test).
ALIGNED = [dev("gpu-0", "gpu", "pci0000:00", 0), dev("gpu-1", "gpu", "pci0000:80", 1),
           dev("nic-0", "nic", "pci0000:20", 0), dev("nic-1", "nic", "pci0000:80", 1)]
UNALIGNED = [dev("gpu-0", "gpu", "pci0000:00", 0), dev("nic-0", "nic", "pci0000:20", 1)]


def _filter(idx, p, names):  # type: ignore[no-untyped-def]
    return run_filter(idx, CFG, parse_pod(p), tuple(names), 0.0)


def test_pcie_constraint_keeps_aligned_node_and_explains_the_other() -> None:
    idx = make_index()
    add_node(idx, "a", ALIGNED)
    add_node(idx, "b", UNALIGNED)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "pair", match=f"{STD}/pcieRoot"))
    out = _filter(idx, pod("p", templates={"acc": "pair"}), ["a", "b"])
    assert out.passed == ["a"]
    assert out.unresolvable == {"b": "topodra: no PCIe root with a free GPU and a free NIC"}
    assert out.error == ""


def test_count_shortfall_reason() -> None:
    idx = make_index()
    add_node(idx, "a", [dev(f"gpu-{i}", "gpu", "r0", 0) for i in range(3)])
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "four", gpus=4, nics=0))
    out = _filter(idx, pod("p", templates={"acc": "four"}), ["a"])
    assert out.failed == {"a": "topodra: 3 free GPUs, pod needs 4"}


def test_required_alignment_across_claims_by_annotation() -> None:
    """GPU and NIC in separate claims: DRA cannot align them; the extender requires it when asked."""
    idx = make_index()
    add_node(idx, "a", ALIGNED)
    add_node(idx, "b", UNALIGNED)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "g", gpus=1, nics=0))
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "n", gpus=0, nics=1))
    p = pod("p", templates={"gpu": "g", "nic": "n"}, annotations={"topodra.dev/alignment": "pcieRoot"})
    out = _filter(idx, p, ["a", "b"])
    assert out.passed == ["a"]
    assert out.unresolvable["b"] == "topodra: no PCIe root with a free GPU and a free NIC"
    # Without the annotation alignment is only preferred: both nodes pass.
    out = _filter(idx, pod("q", templates={"gpu": "g", "nic": "n"}), ["a", "b"])
    assert out.passed == ["a", "b"]


def test_numa_required_several_pairs() -> None:
    idx = make_index()
    add_node(idx, "a", eight_by_eight())
    apply_event(idx, "resourceclaimtemplates", "ADDED",
                gpu_nic_template("ml", "t", gpus=4, nics=4, match=f"{STD}/numaNode"))
    assert _filter(idx, pod("p", templates={"acc": "t"}), ["a"]).passed == ["a"]
    # Allocate 3 GPUs on NUMA 0 and 3 on NUMA 1: 8 free devices remain but no NUMA node has 4 GPUs.
    taken = [("a", f"gpu-{i}") for i in (0, 1, 2, 4, 5, 6)]
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "other", {}, allocated=taken))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a"])
    assert out.failed == {"a": "topodra: 2 free GPUs, pod needs 4"}
    apply_event(idx, "resourceclaims", "DELETED", claim("ml", "other", {}))
    taken = [("a", f"gpu-{i}") for i in (0, 1, 4, 5)]
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "other", {}, allocated=taken))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a"])
    assert out.unresolvable == {"a": "topodra: no NUMA node with 4 free GPUs and 4 free NICs"}


def test_required_pairs_message_for_several_pairs() -> None:
    idx = make_index()
    devices = [dev(f"gpu-{i}", "gpu", f"r{i}", 0) for i in range(4)] + \
              [dev("nic-0", "nic", "r0", 0), dev("nic-1", "nic", "r1", 0), dev("nic-2", "nic", "x", 0),
               dev("nic-3", "nic", "y", 0)]
    add_node(idx, "a", devices)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", gpus=4, nics=4))
    p = pod("p", templates={"acc": "t"}, annotations={"topodra.dev/alignment": "pcieRoot"})
    out = _filter(idx, p, ["a"])
    assert out.unresolvable == {"a": "topodra: only 2 of the pod's 4 GPU-NIC pairs can share a PCIe root"}


def test_allocated_claim_of_the_pod_needs_nothing_more() -> None:
    idx = make_index()
    add_node(idx, "a", UNALIGNED)
    t = gpu_nic_template("ml", "pair", match=f"{STD}/pcieRoot")
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "mine", t["spec"]["spec"], allocated=[("a", "gpu-0")]))
    out = _filter(idx, pod("p", claims={"acc": "mine"}), ["a", "zzz"])
    assert out.passed == ["a", "zzz"]


def test_unknown_claim_is_an_error_to_retry() -> None:
    idx = make_index()
    out = _filter(idx, pod("p", claims={"acc": "missing"}), ["a"])
    assert "not in the extender's cache yet" in out.error and out.passed == []


def test_unsupported_cel_is_not_judged() -> None:
    idx = make_index()
    add_node(idx, "a", UNALIGNED)
    sel = 'device.attributes["topodra.dev"].productName.matches("H100")'
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", nics=0, gpu_selectors=[sel]))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a"])
    assert out.passed == ["a"]


def test_selector_on_identity_attribute_is_exact() -> None:
    idx = make_index()
    devices = [dev("gpu-0", "gpu", "r0", 0, **{"topodra.dev/uuid": "GPU-a"}),
               dev("gpu-1", "gpu", "r0", 0, **{"topodra.dev/uuid": "GPU-b"})]
    add_node(idx, "a", devices)
    add_node(idx, "b", [dev("gpu-0", "gpu", "r0", 0, **{"topodra.dev/uuid": "GPU-c"})])
    sel = 'device.attributes["topodra.dev"].uuid == "GPU-b"'
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", nics=0, gpu_selectors=[sel]))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a", "b"])
    assert out.passed == ["a"]
    assert out.failed == {"b": "topodra: 0 free GPUs, pod needs 1"}


def test_first_available_alternatives() -> None:
    idx = make_index()
    add_node(idx, "a", [dev("gpu-0", "gpu", "r0", 0)])
    spec = {"devices": {"requests": [{"name": "g", "firstAvailable": [
        {"name": "two", "deviceClassName": "gpu.topodra.dev", "count": 2},
        {"name": "one", "deviceClassName": "gpu.topodra.dev", "count": 1}]}]}}
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "c", spec))
    assert _filter(idx, pod("p", claims={"acc": "c"}), ["a"]).passed == ["a"]


def test_old_pool_generation_and_tainted_devices_are_ignored() -> None:
    from tests.unit.test_extender_support import slice_obj

    idx = make_index()
    add_node(idx, "a", [dev("gpu-0", "gpu", "r0", 0)])
    # A newer generation in another slice of the same pool replaces the old one.
    newer = slice_obj("a", [dict(dev("gpu-1", "gpu", "r0", 0), taints=[{"key": "x", "effect": "NoSchedule"}])],
                      generation=2, name="a-topodra.dev-00001")
    apply_event(idx, "resourceslices", "ADDED", newer)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", nics=0))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a"])
    assert out.failed == {"a": "topodra: 0 free GPUs, pod needs 1"}


def test_single_feasible_node_reserves_devices_for_the_next_pod() -> None:
    idx = make_index()
    add_node(idx, "a", ALIGNED)
    add_node(idx, "b", UNALIGNED)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "pair", match=f"{STD}/pcieRoot"))
    assert _filter(idx, pod("p1", templates={"acc": "pair"}), ["a", "b"]).passed == ["a"]
    # p1's aligned pair on "a" is now set aside: p2 finds no aligned pair anywhere.
    out = _filter(idx, pod("p2", templates={"acc": "pair"}), ["a", "b"])
    assert out.passed == []
    # p1 shows up bound: its reservation is released (the claim watch will carry the real allocation).
    apply_event(idx, "pods", "MODIFIED", pod("p1", templates={"acc": "pair"}, node="a"))
    assert _filter(idx, pod("p2", templates={"acc": "pair"}), ["a", "b"]).passed == ["a"]
    # Reservations expire.
    _filter(idx, pod("p3", templates={"acc": "pair"}), ["a", "b"])
    idx.refresh(CFG.decision_ttl_seconds + 5)
    assert not idx.reservations


def test_changes_are_absorbed_in_slices() -> None:
    idx = make_index()
    for n in ("a", "b", "c"):
        add_node(idx, n, ALIGNED)
    assert idx.recompute_some(2) == 1
    assert idx.recompute_some(2) == 0
    assert set(idx.sig_of) == {"a", "b", "c"}


def test_unsupported_cel_is_reported() -> None:
    idx = make_index()
    add_node(idx, "a", UNALIGNED)
    sel = 'device.attributes["topodra.dev"].productName.matches("H100")'
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", nics=0, gpu_selectors=[sel]))
    out = _filter(idx, pod("p", templates={"acc": "t"}), ["a"])
    assert any("CEL not evaluated" in n and "matches" in n for n in out.notes)
