"""Who is active under --follow-lease: the identity match and the follower's transitions."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kubeaccess.aio import AsyncKube
from scheduler_plugin.leadership import LeaseFollower, LeaseRef, holds


@pytest.mark.parametrize(("holder", "identity", "active"), [
    ("cp-1", "cp-1", True),
    ("cp-1_0d7c3f1e-5b8a-4f3e-9a51-8c0e6a0c1b2d", "cp-1", True),  # kube-scheduler's <hostname>_<uuid>
    ("cp-10_0d7c3f1e", "cp-1", False),  # a longer host name is another host
    ("cp-1x", "cp-1", False),
    ("", "cp-1", False),
    ("cp-1", "", False),
    ("", "", False),
])
def test_holds(holder: str, identity: str, active: bool) -> None:
    assert holds(holder, identity) is active


def test_lease_ref() -> None:
    ref = LeaseRef.parse("kube-system/kube-scheduler")
    assert (ref.namespace, ref.name, str(ref)) == ("kube-system", "kube-scheduler", "kube-system/kube-scheduler")
    assert ref.path == "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    for bad in ("kube-scheduler", "/x", "x/", "a/b/c", ""):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            LeaseRef.parse(bad)


def _lease(holder: str | None) -> dict[str, Any]:
    return {"metadata": {"name": "s"}, "spec": {} if holder is None else {"holderIdentity": holder}}


def test_follower_transitions_call_back_only_on_change() -> None:
    calls: list[bool] = []

    async def on_change(active: bool) -> None:
        calls.append(active)

    f = LeaseFollower(cast(AsyncKube, object()), LeaseRef("ns", "s"), "cp-1", on_change)

    async def run() -> None:
        assert f.standby_reason() == "lease ns/s not read yet"
        await f._seen(_lease("cp-2_abc"))  # first look: standby, said once
        assert f.standby_reason() == "standby: lease ns/s is held by 'cp-2_abc', not by 'cp-1'"
        await f._seen(_lease("cp-3_abc"))  # another holder, still not us: no call
        await f._seen(_lease("cp-1_def"))
        assert f.active and f.standby_reason() is None
        await f._seen(_lease("cp-1_def"))  # renewals change nothing
        await f._seen(None)  # Lease deleted
        assert f.standby_reason() == "standby: lease ns/s is held by no one, not by 'cp-1'"
        await f._seen(_lease(None))  # released (holderIdentity cleared): still standby, no call

    asyncio.run(run())
    assert calls == [False, True, False]


def test_a_failing_callback_does_not_stop_the_follower() -> None:
    async def on_change(active: bool) -> None:
        raise RuntimeError("boom")

    f = LeaseFollower(cast(AsyncKube, object()), LeaseRef("ns", "s"), "cp-1", on_change)
    asyncio.run(f._seen(_lease("cp-1")))
    assert f.active
