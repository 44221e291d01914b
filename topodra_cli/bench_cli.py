"""`topodra bench` sub-command."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("bench", help="bench (coming)")
    p.set_defaults(handler=lambda _a: 2)
