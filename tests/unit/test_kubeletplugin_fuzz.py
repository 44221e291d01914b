"""Hypothesis-generated malformed and odd requests never crash or hang the plugin."""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.kubeletsim import claims_request, decode_prepare, decode_unprepare, field_bytes
from tests.unit.test_kubeletplugin_support import Env, env

__all__ = ["env"]

VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
claim = st.tuples(text, st.one_of(text, st.uuids().map(str)), text)


def test_fuzz_requests(env: Env) -> None:
    env.start()
    good = env.claims.add([("gpu", "gpu-0")])
    with env.sim() as k:

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            raw=st.one_of(
                st.binary(max_size=300),
                st.lists(claim, max_size=6).map(claims_request),
                st.lists(st.binary(max_size=40), max_size=4).map(lambda xs: b"".join(field_bytes(1, x) for x in xs)),
            ),
            version=st.sampled_from(VERSIONS),
            unprepare=st.booleans(),
        )
        def run(raw: bytes, version: str, unprepare: bool) -> None:
            try:
                out = k.unprepare_raw(raw, version) if unprepare else k.prepare_raw(raw, version)
            except grpc.RpcError as e:
                # only undecodable bytes may fail the whole call, and they fail fast and cleanly
                assert e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), e
                return
            res = decode_unprepare(out) if unprepare else decode_prepare(out)
            assert isinstance(res, dict)

        run()

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(claims=st.lists(claim, min_size=1, max_size=5), version=st.sampled_from(VERSIONS))
        def structured(claims: list[tuple[str, str, str]], version: str) -> None:
            res = k.prepare(claims, version)
            assert set(res) == {c[1] for c in claims}  # one entry per requested UID
            for r in res.values():
                assert r.error or r.devices == []
            assert set(k.unprepare(claims, version)) == {c[1] for c in claims}

        structured()
        # still serving, still correct
        assert k.prepare([good])[good[1]].error == ""
