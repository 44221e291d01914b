"""`topodra extender` sub-command (filled in by the extender issue)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("extender", help="run the scheduler extender")
    p.set_defaults(handler=lambda _a: _todo())


def _todo() -> int:
    print("topodra extender: not implemented yet")
    return 2
