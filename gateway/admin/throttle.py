"""Failed-login throttling of the admin listener: per address and per account, counted in the store.

Failures are rows in the store, so every worker and instance using it sees one count.
Guesses being checked right now are counted in memory too, so parallel requests cannot
slip past the limit while their password checks run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.store.base import LoginRecords

FAILURE_WINDOW = 600.0  # seconds a failed login counts against its address and account
FAILURES_BEFORE_LOCKOUT = 5  # failed logins per subject and window before lockouts start
LOCKOUT_BASE = 1.0  # seconds of the first lockout; doubles with every further failure
LOCKOUT_MAX = 300.0  # seconds; the longest lockout of an address
# Seconds; the longest lockout of an account. Kept short so that an attacker guessing an
# admin's password cannot keep the real admin out for longer than this at a time.
ACCOUNT_LOCKOUT_MAX = 60.0
# Seconds an address an admin logged in from stays exempt from that account's lockout: an
# attacker elsewhere can lock the account, but never out of the places its admin uses.
TRUSTED_ADDRESS_WINDOW = 30 * 86_400.0
FAILURE_DELAY_BASE = 0.05  # seconds a failed attempt's answer is held back; doubles each time
FAILURE_DELAY_MAX = 2.0  # seconds; the longest hold-back of one answer
PENDING_RETRY_AFTER = 1.0  # seconds to wait when too many guesses are being checked at once
ADDRESS = "addr:"  # subject prefix of a client address
ACCOUNT = "acct:"  # subject prefix of an admin account


def subjects(address: str, account: str | None) -> tuple[str, ...]:
    """Return the throttle subjects of an attempt: its address, and its account when named."""
    if account is None:
        return (ADDRESS + address,)
    return (ADDRESS + address, ACCOUNT + account)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A password check in progress: its subjects and how many checks were ahead of it."""

    subjects: tuple[str, ...]
    ahead: dict[str, int]
    counted: bool = True


class LoginThrottle:
    """Failed-login counter per address and per account with hold-back and bounded lockout.

    The first `free_failures` failures of a subject in `window` seconds are only held back
    (`delay_base`, doubling); after that the subject is locked out for `lockout_base`
    seconds, doubling with each further failure, up to `lockout_max` for an address and
    `account_lockout_max` for an account.
    """

    def __init__(
        self,
        *,
        window: float = FAILURE_WINDOW,
        free_failures: int = FAILURES_BEFORE_LOCKOUT,
        lockout_base: float = LOCKOUT_BASE,
        lockout_max: float = LOCKOUT_MAX,
        account_lockout_max: float = ACCOUNT_LOCKOUT_MAX,
        delay_base: float = FAILURE_DELAY_BASE,
        delay_max: float = FAILURE_DELAY_MAX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.free_failures = free_failures
        self.lockout_base = lockout_base
        self.lockout_max = lockout_max
        self.account_lockout_max = account_lockout_max
        self.delay_base = delay_base
        self.delay_max = delay_max
        self._clock = clock
        self._pending: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _cap(self, subject: str) -> float:
        return self.account_lockout_max if subject.startswith(ACCOUNT) else self.lockout_max

    def begin(self, address: str, account: str | None, *, counted: bool = True) -> Reservation:
        """Reserve a password check (no await: parallel guesses see each other).

        `counted=False` is for an attempt that joins an identical check already running:
        it adds no guess, so it neither waits for nor delays the others.
        """
        names = subjects(address, account)
        if not counted:
            return Reservation(names, dict.fromkeys(names, 0), counted=False)
        ahead = {name: self._pending.get(name, 0) for name in names}
        for name in names:
            self._pending[name] = self._pending.get(name, 0) + 1
        return Reservation(names, ahead)

    def end(self, reservation: Reservation) -> None:
        """Release a reservation once its check is over (or refused)."""
        if not reservation.counted:
            return
        for name in reservation.subjects:
            left = self._pending.get(name, 0) - 1
            if left > 0:
                self._pending[name] = left
            else:
                self._pending.pop(name, None)

    async def retry_after(
        self, store: LoginRecords, reservation: Reservation, *, account: bool, trusted: bool = False
    ) -> float | None:
        """Return seconds until the reserved attempt may be checked, or None to check it now.

        `account` says whether the attempt names an existing admin; only then is that
        account's stored count read (no other typed name reaches the store). `trusted` says
        that admin logged in from this address lately: the account's lockout spares it
        (the address's own count still applies).
        """
        now = self._clock()
        stored = reservation.subjects if account and not trusted else reservation.subjects[:1]
        counts = await store.login_failures(stored, now - self.window)
        wait = 0.0
        for name in stored:
            found = counts.get(name)
            count = found.failures if found is not None else 0
            if found is not None and count >= self.free_failures:
                exponent = min(count - self.free_failures, 32)
                hold = min(self.lockout_base * 2.0**exponent, self._cap(name))
                wait = max(wait, found.last_at + hold - now)
            if reservation.ahead[name] and count + reservation.ahead[name] >= self.free_failures:
                wait = max(wait, PENDING_RETRY_AFTER)
        return wait if wait > 0 else None

    async def fail(self, store: LoginRecords, address: str, account: str | None) -> float:
        """Record a failed login; return the seconds its answer should be held back.

        `account` is counted only when it names an existing admin (anything else typed
        into the name field, a password included, is never stored).
        """
        now = self._clock()
        names = subjects(address, account)
        await store.record_login_failure(names, now, now - self.window)
        counts = await store.login_failures(names, now - self.window)
        most = max((found.failures for found in counts.values()), default=1)
        return float(min(self.delay_base * 2.0 ** min(most - 1, 32), self.delay_max))
