"""DRA v1 and v1beta1 gRPC services: one implementation (`DeviceState`), two wire versions.

Both versions share field numbers; v1beta1 has no `Device.share_id`. Responses are keyed by claim
UID with one entry per requested UID; a claim's own failure is its `error`, never a gRPC error.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any, Protocol

import grpc
import structlog

from driver.pb import dra_v1_pb2, dra_v1beta1_pb2
from driver.prepare import ClaimRef, DeviceState

log = structlog.get_logger("topodra.kubeletplugin")

V1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
V1BETA1_SERVICE = "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"
PREPARE = "NodePrepareResources"
UNPREPARE = "NodeUnprepareResources"

# The same messages from the two wire packages; `pb` below is one of them.
PrepareRequest = dra_v1_pb2.NodePrepareResourcesRequest | dra_v1beta1_pb2.NodePrepareResourcesRequest
PrepareResponse = dra_v1_pb2.NodePrepareResourcesResponse | dra_v1beta1_pb2.NodePrepareResourcesResponse
UnprepareRequest = dra_v1_pb2.NodeUnprepareResourcesRequest | dra_v1beta1_pb2.NodeUnprepareResourcesRequest
UnprepareResponse = dra_v1_pb2.NodeUnprepareResourcesResponse | dra_v1beta1_pb2.NodeUnprepareResourcesResponse


class _Claim(Protocol):
    @property
    def namespace(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def name(self) -> str: ...


def _refs(claims: Iterable[_Claim]) -> list[ClaimRef]:
    seen: dict[str, ClaimRef] = {}
    for c in claims:
        seen.setdefault(c.uid, ClaimRef(namespace=c.namespace, uid=c.uid, name=c.name))
    return list(seen.values())


class DraServicer:
    def __init__(self, state: DeviceState, pb: ModuleType) -> None:
        self.state = state
        self.pb = pb
        self.version = "v1" if pb is dra_v1_pb2 else "v1beta1"

    def prepare(self, request: PrepareRequest, context: grpc.ServicerContext) -> PrepareResponse:
        refs = _refs(request.claims)
        log.info("node_prepare_resources", api=self.version, claims=[f"{r}:{r.uid}" for r in refs])
        results = self.state.prepare_many(refs)
        resp: PrepareResponse = self.pb.NodePrepareResourcesResponse()
        for uid, res in results.items():
            entry = resp.claims[uid]  # creates the entry even when it stays empty
            if res.error:
                entry.error = res.error
                continue
            for d in res.devices:
                dev = entry.devices.add(
                    request_names=list(d.request_names),
                    pool_name=d.pool_name,
                    device_name=d.device_name,
                    cdi_device_ids=list(d.cdi_device_ids),
                )
                if d.share_id is not None and isinstance(dev, dra_v1_pb2.Device):  # v1beta1 has no share_id
                    dev.share_id = d.share_id
        self.state.crash_point("before-response")
        return resp

    def unprepare(self, request: UnprepareRequest, context: grpc.ServicerContext) -> UnprepareResponse:
        refs = _refs(request.claims)
        log.info("node_unprepare_resources", api=self.version, claims=[f"{r}:{r.uid}" for r in refs])
        results = self.state.unprepare_many(refs)
        resp: UnprepareResponse = self.pb.NodeUnprepareResourcesResponse()
        for uid, err in results.items():
            entry = resp.claims[uid]
            if err:
                entry.error = err
        return resp

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        pb = self.pb
        service = V1_SERVICE if pb is dra_v1_pb2 else V1BETA1_SERVICE
        handlers: dict[str, Any] = {
            PREPARE: grpc.unary_unary_rpc_method_handler(
                self.prepare,
                request_deserializer=pb.NodePrepareResourcesRequest.FromString,
                response_serializer=pb.NodePrepareResourcesResponse.SerializeToString,
            ),
            UNPREPARE: grpc.unary_unary_rpc_method_handler(
                self.unprepare,
                request_deserializer=pb.NodeUnprepareResourcesRequest.FromString,
                response_serializer=pb.NodeUnprepareResourcesResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(service, handlers)


def handlers(state: DeviceState) -> list[grpc.GenericRpcHandler[Any, Any]]:
    return [
        DraServicer(state, dra_v1_pb2).handler(),
        DraServicer(state, dra_v1beta1_pb2).handler(),
    ]
