"""Exponential backoff with jitter, for every retry loop that talks to the apiserver."""

from __future__ import annotations

import random


class Backoff:
    """Delays base, 2*base, 4*base, ... up to `cap`, each shortened by up to `jitter` (a fraction).

    Jitter only shortens, so `cap` really is the longest wait; it spreads the retries of many clients
    that failed together (an apiserver restart) so they do not all come back at the same instant.
    """

    def __init__(self, base: float = 0.5, cap: float = 30.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {jitter}")
        self.base, self.cap, self.jitter = base, cap, jitter
        self.n = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        nominal = min(self.cap, self.base * 2.0 ** self.n)
        self.n = min(self.n + 1, 60)  # 2**60 * base is past any cap; stop growing the exponent
        return nominal * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.n = 0
