"""Errors shared by the driver's parts, in a module of their own so that no part imports another for them."""

from __future__ import annotations


class StartupError(Exception):
    """The driver cannot start (bad flags, no credentials, plugin missing); the message says why."""
