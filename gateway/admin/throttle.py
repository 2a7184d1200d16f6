"""Failed-login throttling of the admin listener: per-address hold-back and lockout."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

FAILURE_WINDOW = 600.0  # seconds a failed login counts against its address
FAILURES_BEFORE_LOCKOUT = 5  # failed logins per address and window before lockouts start
LOCKOUT_BASE = 1.0  # seconds of the first lockout; doubles with every further failure
LOCKOUT_MAX = 300.0  # seconds; the longest lockout
FAILURE_DELAY_BASE = 0.05  # seconds a failed attempt's answer is held back; doubles each time
FAILURE_DELAY_MAX = 2.0  # seconds; the longest hold-back of one answer
PENDING_RETRY_AFTER = 1.0  # seconds to wait when too many guesses are being checked at once
MAX_TRACKED_ADDRESSES = 10_000  # addresses remembered by the throttle (memory bound)


@dataclass
class _Address:
    """Failed-login state of one client address."""

    failures: deque[float] = field(default_factory=deque)
    pending: int = 0


class LoginThrottle:
    """Per-address failed-login counter with exponential hold-back and lockout.

    The first `free_failures` failures in `window` seconds are only held back
    (`delay_base`, doubling); after that the address is locked out for `lockout_base`
    seconds, doubling with each further failure up to `lockout_max`. Guesses being
    checked at the same time count too, so parallel requests cannot bypass the limit.
    """

    def __init__(
        self,
        *,
        window: float = FAILURE_WINDOW,
        free_failures: int = FAILURES_BEFORE_LOCKOUT,
        lockout_base: float = LOCKOUT_BASE,
        lockout_max: float = LOCKOUT_MAX,
        delay_base: float = FAILURE_DELAY_BASE,
        delay_max: float = FAILURE_DELAY_MAX,
        max_tracked: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.free_failures = free_failures
        self.lockout_base = lockout_base
        self.lockout_max = lockout_max
        self.delay_base = delay_base
        self.delay_max = delay_max
        self.max_tracked = max_tracked
        self._clock = clock
        self._addresses: dict[str, _Address] = {}

    def __len__(self) -> int:
        return len(self._addresses)

    def _prune(self, state: _Address, now: float) -> None:
        while state.failures and state.failures[0] <= now - self.window:
            state.failures.popleft()

    def _get(self, address: str, now: float) -> _Address:
        state = self._addresses.get(address)
        if state is None:
            if len(self._addresses) >= self.max_tracked:
                self._evict(now)
            state = self._addresses[address] = _Address()
        else:
            self._prune(state, now)
        return state

    def _evict(self, now: float) -> None:
        """Forget idle addresses; if still full, the longest-tracked ones."""
        for address, state in list(self._addresses.items()):
            self._prune(state, now)
            if not state.failures and not state.pending:
                del self._addresses[address]
        while len(self._addresses) >= self.max_tracked:
            oldest = next(iter(self._addresses))
            del self._addresses[oldest]

    def failures(self, address: str) -> int:
        """Return how many failed logins from `address` still count."""
        state = self._addresses.get(address)
        if state is None:
            return 0
        self._prune(state, self._clock())
        return len(state.failures)

    def retry_after(self, address: str) -> float | None:
        """Return seconds until `address` may try again, or None when it may try now."""
        state = self._addresses.get(address)
        if state is None:
            return None
        now = self._clock()
        self._prune(state, now)
        count = len(state.failures)
        if count >= self.free_failures:
            exponent = min(count - self.free_failures, 32)
            locked_until = state.failures[-1] + min(
                self.lockout_base * 2.0**exponent, self.lockout_max
            )
            if now < locked_until:
                return locked_until - now
        if state.pending and count + state.pending >= self.free_failures:
            return PENDING_RETRY_AFTER
        if not state.failures and not state.pending:
            del self._addresses[address]
        return None

    def begin(self, address: str) -> None:
        """Note that a password check for `address` started."""
        self._get(address, self._clock()).pending += 1

    def end(self, address: str) -> None:
        """Note that a password check for `address` finished."""
        state = self._addresses.get(address)
        if state is not None and state.pending:
            state.pending -= 1

    def fail(self, address: str) -> float:
        """Record a failed login; return the seconds its answer should be held back."""
        now = self._clock()
        state = self._get(address, now)
        state.failures.append(now)
        exponent = min(len(state.failures) - 1, 32)
        return min(self.delay_base * 2.0**exponent, self.delay_max)
