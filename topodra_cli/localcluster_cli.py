"""`topodra local-cluster` sub-command."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("local-cluster", help="local-cluster (coming)")
    p.set_defaults(handler=lambda _a: 2)
