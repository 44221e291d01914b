"""The cached group objects gang sources read: upstream PodGroups, coscheduling PodGroups, Jobs.

Fed by the watch cache like the index (one `apply`/`replace` per kind). A kind whose API the cluster does
not serve (no GenericWorkload, no coscheduling CRD) is simply empty; `served` records which are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from scheduler_plugin.gang.model import (
    GroupObject,
    parse_coscheduling_podgroup,
    parse_job,
    parse_upstream_podgroup,
)

UPSTREAM, COSCHEDULING, JOBS = "podgroups", "cospodgroups", "jobs"
PARSERS: dict[str, Callable[[Mapping[str, Any]], GroupObject]] = {
    UPSTREAM: parse_upstream_podgroup,
    COSCHEDULING: parse_coscheduling_podgroup,
    JOBS: parse_job,
}


class GroupStore:
    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], GroupObject]] = {k: {} for k in PARSERS}
        self.served: dict[str, bool] = dict.fromkeys(PARSERS, False)
        self.generation = 0  # bumps on every change (the coordinator re-reads its gangs' specs then)

    # ---- fed by the cache --------------------------------------------------------------------
    def apply(self, kind: str, etype: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if etype == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = PARSERS[kind](obj)
        self.generation += 1

    def replace(self, kind: str, items: Iterable[GroupObject], served: bool = True) -> None:
        self.objects[kind] = {(o.namespace, o.name): o for o in items}
        self.served[kind] = served
        self.generation += 1

    # ---- GangObjects ---------------------------------------------------------------------------
    def upstream_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.objects[UPSTREAM].get((namespace, name))

    def coscheduling_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.objects[COSCHEDULING].get((namespace, name))

    def job(self, namespace: str, name: str) -> GroupObject | None:
        return self.objects[JOBS].get((namespace, name))

    def coscheduling_served(self) -> bool:
        return self.served[COSCHEDULING]
