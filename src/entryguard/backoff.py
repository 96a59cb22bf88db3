"""Exponential backoff with jitter, for every loop that retries a peer (the edge
following the control plane, the agent's tunnel and its script commands).

The jitter keeps many edges or agents that lost the same peer at the same moment from
coming back in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays of ``initial``, then twice the last, up to ``maximum``, each scaled by a
    random factor in ``[low, high)``; :meth:`reset` after a success."""

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        *,
        jitter: tuple[float, float] = (0.5, 1.0),
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.low, self.high = jitter
        self._rng = rng
        self._base = min(initial, maximum)

    def reset(self) -> None:
        self._base = min(self.initial, self.maximum)

    def next(self) -> float:
        """The delay before the next attempt; the one after it doubles (up to the cap)."""
        delay = self._base * (self.low + (self.high - self.low) * self._rng())
        self._base = min(self.maximum, self._base * 2)
        return delay
