"""Gang scheduling: which gang a pod is in (sources), and the gang's data (model)."""

from scheduler_plugin.gang.model import (
    GangKey,
    GangObjects,
    GangSpec,
    GroupObject,
    KnowsCoscheduling,
    OwnerRef,
    Waiting,
    parse_coscheduling_podgroup,
    parse_job,
    parse_upstream_podgroup,
)
from scheduler_plugin.gang.sources import gang_of, merge_members

__all__ = [
    "GangKey",
    "GangObjects",
    "GangSpec",
    "GroupObject",
    "KnowsCoscheduling",
    "OwnerRef",
    "Waiting",
    "gang_of",
    "merge_members",
    "parse_coscheduling_podgroup",
    "parse_job",
    "parse_upstream_podgroup",
]
