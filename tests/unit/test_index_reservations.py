"""Reservations stay counted when kube-scheduler's first-fit allocator takes a device set aside for another pod."""

from __future__ import annotations

from scheduler_plugin.cache import apply_event
from tests.unit.test_extender_support import add_node, claim, dev, make_index

D = "topodra.dev"


def test_a_reserved_device_allocated_to_another_pod_moves_the_reservation() -> None:
    idx = make_index()
    add_node(idx, "n", [dev(f"gpu-{i}", "gpu", "pci0000:00", 0) for i in range(4)])
    idx.refresh(0.0)
    # The extender set gpu-0 aside for p1 and gpu-1 for p2 (p2's claim is known).
    idx.reserve_keys("p1", "n", ((D, "n", "gpu-0"),), (), 100.0)
    idx.reserve_keys("p2", "n", ((D, "n", "gpu-1"),), (("ml", "c2"),), 100.0)
    idx.refresh(0.0)
    assert idx.nodes["n"].free_gpus == 2
    # kube-scheduler allocates p2's claim first-fit: gpu-0, the device set aside for p1.
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "c2", {}, allocated=[("n", "gpu-0")]))
    idx.refresh(0.0)
    assert "p2" not in idx.reservations
    assert idx.reservations["p1"].devices == ((D, "n", "gpu-1"),)  # moved to the device p2 no longer needs
    assert idx.nodes["n"].free_gpus == 2  # not 3: p1 still holds one


def test_without_a_spare_the_reservation_moves_to_a_free_device_of_the_same_profile() -> None:
    idx = make_index()
    add_node(idx, "n", [dev("gpu-0", "gpu", "pci0000:00", 0), dev("gpu-1", "gpu", "pci0000:40", 1),
                        dev("gpu-2", "gpu", "pci0000:00", 0)])
    idx.refresh(0.0)
    idx.reserve_keys("p1", "n", ((D, "n", "gpu-0"),), (), 100.0)
    idx.refresh(0.0)
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "other", {}, allocated=[("n", "gpu-0")]))
    idx.refresh(0.0)
    # gpu-2 is on the same PCIe root as gpu-0 (same profile); gpu-1 is not.
    assert idx.reservations["p1"].devices == ((D, "n", "gpu-2"),)
    assert idx.nodes["n"].free_gpus == 1
