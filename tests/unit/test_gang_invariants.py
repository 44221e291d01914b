"""The gang invariant checker's logic, fed synthetic pod and claim lists (no API)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.gang_invariants import GangChecker, GangInvariants, Json, default_gang_of

NS = "ns"


def pod(name: str, gang: str | None = "g", size: int = 2, node: str = "", *, deleting: bool = False,
        claims: tuple[str, ...] = ()) -> Json:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"uid-{name}"}
    if gang is not None:
        meta["annotations"] = {"topodra.dev/gang": gang, "topodra.dev/gang-size": str(size)}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": meta, "spec": spec,
            "status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": c} for c in claims]}}


def claim(name: str, *devices: str, owner: str | None = None, admin: bool = False, share: bool = False) -> Json:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"cuid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"kind": "Pod", "name": owner, "uid": f"uid-{owner}", "controller": True}]
    status: dict[str, Any] = {}
    if devices:
        results = []
        for d in devices:
            r: dict[str, Any] = {"request": "gpu", "driver": "gpu.topodra.dev", "pool": "n1", "device": d}
            if admin:
                r["adminAccess"] = True
            if share:
                r["shareID"] = "7f1c6a4e-0000-4000-8000-000000000000"
            results.append(r)
        status["allocation"] = {"devices": {"results": results}}
    return {"metadata": meta, "spec": {}, "status": status}


def checker(burst: float = 2.0, grace: float = 10.0) -> GangChecker:
    return GangChecker(default_gang_of(), burst=burst, release_grace=grace, start=0.0)


def kinds(c: GangChecker, now: float = 100.0, require_pods: bool = True) -> list[str]:
    return [v.kind for v in c.finish(now, require_pods=require_pods)]


# ---- partial binds ------------------------------------------------------------------------------
def test_full_bind_within_the_burst_is_not_flagged() -> None:
    c = checker()
    c.observe(0.0, [pod("a"), pod("b")], [])
    c.observe(0.2, [pod("a", node="n1"), pod("b")], [])
    c.observe(1.4, [pod("a", node="n1"), pod("b")], [])
    c.observe(1.6, [pod("a", node="n1"), pod("b", node="n2")], [])
    assert kinds(c, 1.6) == []
    assert c.max_partial_seconds == pytest.approx(1.2)
    assert c.counters.gangs_fully_bound == 1
    assert c.counters.gang_pods_seen == 2


def test_partial_bind_longer_than_the_burst_is_flagged_once() -> None:
    c = checker(burst=1.0)
    c.observe(0.0, [pod("a", node="n1"), pod("b")], [])
    for t in (0.5, 1.0, 1.5, 2.0):
        c.observe(t, [pod("a", node="n1"), pod("b")], [])
    c.observe(2.2, [pod("a", node="n1"), pod("b", node="n1")], [])
    found = c.finish(2.2)
    assert [v.kind for v in found] == ["partial-bind"]
    assert "1 of 2 members bound" in found[0].detail
    assert found[0].subject == "gang ns/g"
    assert c.max_partial_seconds == pytest.approx(2.0)


def test_partial_bind_still_open_at_the_end_is_flagged() -> None:
    c = checker(burst=1.0)
    c.observe(0.0, [pod("a", size=3, node="n1"), pod("b", size=3, node="n1"), pod("c", size=3)], [])
    c.observe(1.5, [pod("a", size=3, node="n1"), pod("b", size=3, node="n1"), pod("c", size=3)], [])
    assert kinds(c, 1.5) == ["partial-bind"]


def test_short_open_partial_at_the_end_is_not_flagged() -> None:
    c = checker(burst=1.0)
    c.observe(0.0, [pod("a", node="n1"), pod("b")], [])
    c.observe(0.5, [pod("a", node="n1"), pod("b")], [])
    assert c.settle_until() == pytest.approx(1.0)  # the wrapper keeps polling until the verdict is in
    assert kinds(c, 0.5) == []


def test_teardown_of_a_bound_gang_is_not_a_partial_bind() -> None:
    c = checker(burst=0.5)
    both = [pod("a", node="n1"), pod("b", node="n2")]
    c.observe(0.0, both, [])
    c.observe(0.2, [pod("a", node="n1", deleting=True), pod("b", node="n2")], [])
    c.observe(5.0, [pod("b", node="n2")], [])  # stuck half-deleted far longer than the burst
    c.observe(5.2, [], [])
    assert kinds(c, 5.2) == []


def test_a_gang_released_by_the_test_is_not_a_partial_bind_but_a_new_member_revives_it() -> None:
    c = checker(burst=0.5)
    c.observe(0.0, [pod("a", node="n1"), pod("b")], [])
    c.mark_released("g", 0.1)
    c.observe(3.0, [pod("a", node="n1"), pod("b")], [])
    assert kinds(c, 3.0) == []
    c.observe(4.0, [pod("a", node="n1"), pod("c")], [])  # a replacement member: the gang is live again
    c.observe(5.0, [pod("a", node="n1"), pod("c")], [])
    assert kinds(c, 5.0) == ["partial-bind"]


def test_gangs_are_per_namespace_and_pods_outside_gangs_are_ignored() -> None:
    c = checker(burst=0.5)
    other = pod("x", node="n1")
    other["metadata"]["namespace"] = "other"
    lone = pod("solo", gang=None, node="n1")
    c.observe(0.0, [pod("a"), other, lone], [])
    c.observe(1.0, [pod("a"), other, lone], [])
    # ns/g has 0 of 2 bound (waiting, fine); other/g has 1 of 2: partial
    found = c.finish(1.0)
    assert [(v.kind, v.subject) for v in found] == [("partial-bind", "gang other/g")]
    assert c.counters.gangs_seen == 2 and c.counters.pods_seen == 3


# ---- double allocation --------------------------------------------------------------------------
def test_one_device_in_two_claims_at_once_is_flagged() -> None:
    c = checker()
    c.observe(0.0, [pod("a")], [claim("c1", "gpu-0", "gpu-1"), claim("c2", "gpu-1")])
    c.observe(0.2, [pod("a")], [claim("c1", "gpu-0", "gpu-1"), claim("c2", "gpu-1")])
    found = c.finish(0.2)
    assert [v.kind for v in found] == ["double-allocation"]
    assert found[0].subject == "device gpu.topodra.dev/n1/gpu-1"
    assert "ns/c1" in found[0].detail and "ns/c2" in found[0].detail


def test_a_device_moving_between_claims_is_not_a_double_allocation() -> None:
    c = checker()
    c.observe(0.0, [pod("a")], [claim("c1", "gpu-0"), claim("c2")])
    c.observe(0.2, [pod("a")], [claim("c1"), claim("c2", "gpu-0")])
    assert kinds(c, 0.2) == []
    assert c.counters.allocated_claims_max == 1


def test_admin_access_and_shared_capacity_do_not_count_as_double_allocation() -> None:
    c = checker()
    c.observe(0.0, [pod("a")], [claim("c1", "gpu-0"), claim("c2", "gpu-0", admin=True),
                                claim("s1", "nic-0", share=True), claim("s2", "nic-0", share=True)])
    assert kinds(c, 0.0) == []


# ---- release --------------------------------------------------------------------------------------
def test_claims_allocated_past_the_grace_after_mark_released_are_flagged() -> None:
    c = checker(grace=2.0)
    pods = [pod("a", claims=("a-gpu",)), pod("b", claims=("b-gpu",))]
    claims = [claim("a-gpu", "gpu-0", owner="a"), claim("b-gpu", "gpu-1", owner="b")]
    c.observe(0.0, pods, claims)
    c.mark_released("g", 0.5)
    c.observe(1.0, pods, [claim("a-gpu", owner="a"), claims[1]])  # a's claim deallocated in time
    c.observe(2.4, pods, [claim("a-gpu", owner="a"), claims[1]])
    assert kinds(c, 2.4) == []  # still inside the grace
    c.observe(2.6, pods, [claim("a-gpu", owner="a"), claims[1]])
    found = c.finish(2.6)
    assert [v.kind for v in found] == ["claims-not-released"]
    assert "ns/b-gpu" in found[0].detail
    assert c.settle_until() is None  # nothing left to wait for


def test_deleting_every_member_releases_the_gang_automatically() -> None:
    c = checker(grace=1.0)
    pods = [pod("a", node="n1"), pod("b", node="n1")]
    # generated claims found through their owner reference only
    c.observe(0.0, pods, [claim("a-gpu-x1", "gpu-0", owner="a"), claim("b-gpu-x2", "gpu-1", owner="b")])
    c.observe(0.5, [], [claim("a-gpu-x1", "gpu-0", owner="a"), claim("b-gpu-x2", "gpu-1", owner="b")])
    assert c.counters.releases == 1
    c.observe(0.9, [], [claim("a-gpu-x1", "gpu-0", owner="a")])  # b's claim was deleted
    c.observe(1.6, [], [claim("a-gpu-x1", "gpu-0", owner="a")])
    found = c.finish(1.6)
    assert [(v.kind, "a-gpu-x1" in v.detail) for v in found] == [("claims-not-released", True)]


def test_claims_freed_within_the_grace_are_fine() -> None:
    c = checker(grace=1.0)
    pods = [pod("a", node="n1"), pod("b", node="n1")]
    c.observe(0.0, pods, [claim("a-gpu", "gpu-0", owner="a"), claim("b-gpu", "gpu-1", owner="b")])
    c.observe(0.2, [], [claim("a-gpu", "gpu-0", owner="a"), claim("b-gpu", "gpu-1", owner="b")])
    c.observe(0.8, [], [])
    c.observe(5.0, [], [])
    assert kinds(c, 5.0) == []
    assert c.counters.max_release_seconds == pytest.approx(0.6)


def test_mark_released_of_an_unknown_gang_is_an_error() -> None:
    c = checker()
    c.observe(0.0, [pod("a")], [])
    with pytest.raises(KeyError, match="never observed"):
        c.mark_released("nope", 0.1)


# ---- seeing nothing -----------------------------------------------------------------------------
def test_a_checker_that_saw_no_pods_fails_unless_told_otherwise() -> None:
    c = checker()
    c.observe(0.0, [], [])
    found = c.finish(1.0)
    assert [v.kind for v in found] == ["nothing-observed"]
    assert "no pod seen" in found[0].detail
    assert kinds(checker(), require_pods=False) == []


def test_pods_outside_any_gang_point_at_gang_of() -> None:
    c = checker()
    c.observe(0.0, [pod("a", gang=None)], [])
    found = c.finish(1.0)
    assert "none in a gang (check gang_of)" in found[0].detail


# ---- membership ---------------------------------------------------------------------------------
def test_default_gang_of_reads_annotations_pod_groups_and_jobs() -> None:
    gang_of = default_gang_of(job_sizes={"train": 4}, pod_group_sizes={"pg": 3})
    assert gang_of(pod("a", gang="g", size=8)) == ("g", 8)
    bad = pod("a")
    bad["metadata"]["annotations"]["topodra.dev/gang-size"] = "many"
    assert gang_of(bad) is None
    upstream = pod("b", gang=None)
    upstream["spec"]["schedulingGroup"] = {"podGroupName": "pg"}
    assert gang_of(upstream) == ("pg", 3)
    job = pod("c", gang=None)
    job["metadata"]["labels"] = {"batch.kubernetes.io/job-name": "train"}
    assert gang_of(job) == ("train", 4)
    job["metadata"]["labels"] = {"batch.kubernetes.io/job-name": "unsized"}
    assert gang_of(job) is None
    assert gang_of(pod("d", gang=None)) is None


# ---- the polling wrapper, through its fetch seam --------------------------------------------------
def scripted(*states: tuple[list[Json], list[Json]]) -> Any:
    """A fetch that walks through `states` and then repeats the last one."""
    it = itertools.chain(states, itertools.repeat(states[-1]))
    return lambda: next(it)


def test_wrapper_raises_every_violation_at_exit() -> None:
    partial = ([pod("a", node="n1"), pod("b")], [claim("c1", "gpu-0"), claim("c2", "gpu-0")])
    with pytest.raises(AssertionError) as err, GangInvariants(None, None, burst=0.3, period=0.02,
                                                              fetch=scripted(partial)):
        time.sleep(0.1)  # the block ends before the burst: exit waits for the verdict
    text = str(err.value)
    assert "[partial-bind] gang ns/g" in text and "[double-allocation]" in text


def test_wrapper_passes_a_clean_run_and_exposes_counters() -> None:
    states: list[tuple[list[Json], list[Json]]] = [([pod("a"), pod("b")], []),
                                                   ([pod("a", node="n1"), pod("b", node="n1")], [])]
    with GangInvariants(None, [NS], burst=0.5, period=0.02, fetch=scripted(*states)) as inv:
        time.sleep(0.1)
    assert inv.counters.polls >= 3
    assert inv.counters.gangs_fully_bound == 1
    assert inv.max_partial_seconds == 0.0
    assert 0 < inv.counters.max_poll_gap_seconds < 0.2


def test_wrapper_counts_poll_errors_and_fails_when_it_saw_nothing() -> None:
    calls = itertools.count()

    def fetch() -> tuple[list[Json], list[Json]]:
        if next(calls) > 0:
            raise ConnectionError("apiserver restarting")
        return [], []

    with pytest.raises(AssertionError, match=r"no pod seen .* failed .*apiserver restarting"), \
            GangInvariants(None, None, period=0.02, fetch=fetch):
        time.sleep(0.1)


def test_wrapper_keeps_the_blocks_own_failure() -> None:
    with pytest.raises(ValueError, match="boom") as err, GangInvariants(None, None, period=0.02,
                                                                         fetch=scripted(([], []))):
        raise ValueError("boom")
    assert any("nothing-observed" in n for n in err.value.__notes__)


def test_wrapper_refuses_a_slow_period() -> None:
    with pytest.raises(ValueError, match=r"at most 0\.2"):
        GangInvariants(None, None, period=0.5, fetch=scripted(([], [])))
