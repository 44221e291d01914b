"""What a run is made of: options, the outcome of one check, and the control flow a check uses to end."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

DEFAULT_IMAGE = "docker.io/library/busybox:1.36"
DEFAULT_NAMESPACE_PREFIX = "topodra-conformance-"
GO_PACKAGE = "topodra.dev/conformance"  # the `Package` of every go-test event and the junit suite name


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Options:
    kubeconfig: str | None = None
    context: str | None = None
    run: str = ""
    out: Path | None = None
    dry_run: bool = False
    namespace_prefix: str = DEFAULT_NAMESPACE_PREFIX
    timeout: float = 120.0  # each wait: a pod running, a Job complete, resources released
    image: str = DEFAULT_IMAGE
    host_network: bool = False  # probe pods on nodes without a pod network
    node_selector: tuple[tuple[str, str], ...] = ()  # only nodes with these labels take part
    gang_window: float = 30.0  # how long a gang that cannot fit is watched
    gang_job_labels: tuple[tuple[str, str], ...] = (("topodra.dev/gang", "true"),)
    topology_level: str = "node"  # level of GangPackedInDomain
    topology_label: str = ""  # node label naming that level's domain ("" = the node itself)
    expect_nic_in_pod: bool = False  # an allocated NIC must appear in the pod's network namespace
    scheduler_name: str = ""  # spec.schedulerName of every pod the scheduler places ("" = the default one)


@dataclass
class CheckResult:
    """One test or subtest as go test reports it."""

    name: str  # "TestX" or "TestX/Sub"
    status: Status = Status.PASS
    message: str = ""  # why it failed or was skipped
    output: list[str] = field(default_factory=list)  # its log lines, in order
    started: float = 0.0  # wall clock (time.time())
    elapsed: float = 0.0

    @property
    def parent(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def depth(self) -> int:
        return self.name.count("/")


class CheckFailed(Exception):
    """The check saw something wrong; the message says what it saw."""


class CheckSkipped(Exception):
    """The check does not apply to this cluster; the message says why."""


class UsageError(Exception):
    """Bad flags or an unreachable cluster: exit 2 before anything is created."""
