"""`topodra driver` sub-command (filled in by the driver issues)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("driver", help="run the DRA driver (kubelet plugin + slices)")
    p.set_defaults(handler=lambda _a: _todo())


def _todo() -> int:
    print("topodra driver: not implemented yet")
    return 2
