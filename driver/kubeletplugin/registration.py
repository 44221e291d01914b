"""The registration service the kubelet's plugin watcher calls on `<root>/plugins_registry/*.sock`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from driver.pb import pluginregistration_v1_pb2 as reg_pb

log = structlog.get_logger("topodra.kubeletplugin")

SERVICE = "pluginregistration.Registration"
GET_INFO = f"/{SERVICE}/GetInfo"
NOTIFY = f"/{SERVICE}/NotifyRegistrationStatus"
PLUGIN_TYPE = "DRAPlugin"
DRA_V1 = "v1.DRAPlugin"
DRA_V1BETA1 = "v1beta1.DRAPlugin"
HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"


def supported_versions(health: bool) -> list[str]:
    """Order matters: the kubelet takes the first entry it knows."""
    out = [DRA_V1, DRA_V1BETA1]
    if health:
        out.append(HEALTH_V1ALPHA1)
    return out


class RegistrationServicer:
    def __init__(
        self,
        driver: str,
        endpoint: str,
        versions: list[str],
        on_status: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.info = reg_pb.PluginInfo(type=PLUGIN_TYPE, name=driver, endpoint=endpoint, supported_versions=versions)
        self.registered = threading.Event()
        self.refusals = 0
        self._on_status = on_status

    def get_info(self, request: reg_pb.InfoRequest, context: grpc.ServicerContext) -> reg_pb.PluginInfo:
        log.info("registration_get_info", endpoint=self.info.endpoint, versions=list(self.info.supported_versions))
        return self.info

    def notify(
        self, request: reg_pb.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg_pb.RegistrationStatusResponse:
        if request.plugin_registered:
            self.registered.set()
            log.info("plugin_registered", driver=self.info.name, endpoint=self.info.endpoint)
            if self._on_status is not None:
                try:
                    self._on_status(True, "")
                except Exception:  # Notify(true) must never answer with an error
                    log.exception("registration_callback_failed")
            return reg_pb.RegistrationStatusResponse()
        self.refusals += 1
        self.registered.clear()
        log.error("plugin_registration_refused", driver=self.info.name, reason=request.error)
        if self._on_status is not None:
            self._on_status(False, request.error)
        context.abort(grpc.StatusCode.UNKNOWN, f"kubelet refused the registration of {self.info.name}: {request.error}")
        raise AssertionError("unreachable")  # context.abort raises

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        handlers: dict[str, Any] = {
            "GetInfo": grpc.unary_unary_rpc_method_handler(
                self.get_info,
                request_deserializer=reg_pb.InfoRequest.FromString,
                response_serializer=reg_pb.PluginInfo.SerializeToString,
            ),
            "NotifyRegistrationStatus": grpc.unary_unary_rpc_method_handler(
                self.notify,
                request_deserializer=reg_pb.RegistrationStatus.FromString,
                response_serializer=reg_pb.RegistrationStatusResponse.SerializeToString,
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)
