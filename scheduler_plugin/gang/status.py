"""What a gang is waiting for, in words and as JSON (the `topodra.dev/gang-status` pod annotation).

Events and the annotation change only when the phase or the blocking level changes, not with every count
("3 of 16 members exist", "4 of 16 ..."): each write to a pending pod requeues it in kube-scheduler, and a
1,000-member gang would otherwise cost a million writes while it assembles. kube-scheduler's own
FailedScheduling events carry the current sentence, from the filter's reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson


class Phase(enum.Enum):
    COLLECTING = "Collecting"  # fewer than size members exist
    WAITING = "Waiting"  # complete, but does not fit now (message: where it comes closest, who holds what)
    REFUSED = "Refused"  # can never be placed as asked (bad spec, larger than any allowed domain)
    PLANNED = "Planned"  # every member has a node; devices set aside
    BINDING = "Binding"  # some members passed PreBind; binds held until all have
    BOUND = "Bound"
    RELEASED = "Released"  # a plan was given up (timeout, node lost, member deleted)
    PARTIAL = "PartlyBound"  # some members bound without the rest (an interrupted bind burst)


_REASONS = {
    Phase.COLLECTING: "GangCollecting",
    Phase.WAITING: "GangWaiting",
    Phase.REFUSED: "GangRefused",
    Phase.PLANNED: "GangPlanned",
    Phase.BINDING: "GangBinding",
    Phase.BOUND: "GangBound",
    Phase.RELEASED: "GangReleased",
    Phase.PARTIAL: "GangPartlyBound",
}


@dataclass(frozen=True, slots=True)
class GangStatus:
    phase: Phase
    message: str
    level: str = ""  # the level the message is about (the blocking one, or where the plan lies)
    domain: str = ""
    members: int = 0
    size: int = 0

    @property
    def reason(self) -> str:
        return _REASONS[self.phase]

    def same(self, other: GangStatus) -> bool:
        """Worth no new Event or annotation: same phase, level and domain."""
        return (self.phase, self.level, self.domain) == (other.phase, other.level, other.domain)

    def to_json(self) -> str:
        return orjson.dumps({"phase": self.phase.value, "reason": self.reason, "message": self.message,
                             "level": self.level, "domain": self.domain, "members": self.members,
                             "size": self.size}).decode()
