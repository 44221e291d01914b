"""The DRAResourceHealth gRPC service (v1alpha1 and v1): streams the health monitor's verdicts.

The stream sends the full list of the node's devices when it opens, after every change, and at
least every `resend_every` seconds, so the kubelet (30 s staleness) never marks devices Unknown.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import grpc
import structlog

from driver.kubeletplugin.health import HEALTHY, UNHEALTHY, UNKNOWN, DeviceHealth, HealthMonitor
from driver.pb import dra_health_v1_pb2, dra_health_v1alpha1_pb2

log = structlog.get_logger("topodra.kubeletplugin")

# The same messages from the two wire packages; `pb` below is one of them.
WatchRequest = dra_health_v1_pb2.NodeWatchResourcesRequest | dra_health_v1alpha1_pb2.NodeWatchResourcesRequest
WatchResponse = dra_health_v1_pb2.NodeWatchResourcesResponse | dra_health_v1alpha1_pb2.NodeWatchResourcesResponse


_STATUS = {HEALTHY: 1, UNHEALTHY: 2, UNKNOWN: 0}


class HealthServicer:
    """NodeWatchResources for one wire version (v1alpha1 or v1: same messages, other package)."""

    def __init__(self, monitor: HealthMonitor, pb: ModuleType, resend_every: float = 10.0) -> None:
        self.monitor = monitor
        self.pb = pb
        self.resend_every = resend_every
        self.package = pb.DESCRIPTOR.package

    def _response(self, devices: Sequence[DeviceHealth]) -> WatchResponse:
        pb = self.pb
        resp: WatchResponse = pb.NodeWatchResourcesResponse(
            devices=[
                pb.DeviceHealth(
                    device=pb.DeviceIdentifier(pool_name=d.pool, device_name=d.device),
                    health=_STATUS[d.status],
                    last_updated_time=d.updated,
                    health_check_timeout_seconds=int(max(30.0, 3 * self.resend_every)),
                    message=d.message,
                )
                for d in devices
            ]
        )
        return resp

    def watch(self, request: WatchRequest, context: grpc.ServicerContext) -> Iterator[WatchResponse]:
        log.info("health_stream_opened", api=self.package, peer=context.peer())
        version, devices = self.monitor.snapshot()
        if version == 0:  # first check still running
            version, devices = self.monitor.wait(0, self.resend_every)
        yield self._response(devices)
        while context.is_active() and not self.monitor.stopped:
            version, devices = self.monitor.wait(version, self.resend_every)
            if self.monitor.stopped:
                break
            now = int(time.time())
            yield self._response([DeviceHealth(d.pool, d.device, d.status, d.message, now) for d in devices])
        log.info("health_stream_closed", api=self.package)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        pb = self.pb
        return grpc.method_handlers_generic_handler(
            f"{self.package}.DRAResourceHealth",
            {
                "NodeWatchResources": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=pb.NodeWatchResourcesRequest.FromString,
                    response_serializer=pb.NodeWatchResourcesResponse.SerializeToString,
                )
            },
        )


def handlers(monitor: HealthMonitor, resend_every: float = 10.0) -> list[grpc.GenericRpcHandler[Any, Any]]:
    return [
        HealthServicer(monitor, dra_health_v1alpha1_pb2, resend_every).handler(),
        HealthServicer(monitor, dra_health_v1_pb2, resend_every).handler(),
    ]
