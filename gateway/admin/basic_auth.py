"""HTTP Basic authentication of admin accounts: password checks off the event loop, throttled.

Authentication only says who is calling; what they may do (grant limits) is checked by the
handlers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

import gateway.clock
from gateway.admin import passwords
from gateway.admin.accounts import is_admin_name
from gateway.admin.errors import E_TOO_MANY_ATTEMPTS, E_UNAUTHORIZED, ApiError
from gateway.admin.throttle import TRUSTED_ADDRESS_WINDOW, LoginThrottle
from gateway.proxy.credentials import decode_basic, split_authorization
from gateway.store.base import AdminAccount, KeyStore, StoreUnavailableError

log = logging.getLogger("keygate.admin.auth")

REALM = "keygate admin"
WWW_AUTHENTICATE = f'Basic realm="{REALM}", charset="UTF-8"'
AUDIT_LOGIN_FAILED = "admin_login_failed"
AUDIT_LOGIN_THROTTLED = "admin_login_throttled"
UNKNOWN_ACTOR = "?"
LOCAL_ACTOR = "local:"  # audit actors of local accounts: local:<name> (identity.actor_of)
HASH_WORKERS = 2  # threads checking passwords (each scrypt check needs ~16 MiB)
VERIFIED_TTL = 60.0  # seconds a successful password check is remembered
VERIFIED_MAX = 1024  # remembered successful checks (memory bound)

M_MISSING = "admin credentials required (HTTP Basic)"
M_MALFORMED = "malformed HTTP Basic credentials"
M_INVALID = "invalid admin name or password"
M_LOCKED = "too many failed logins from this address or for this account; retry later"
M_INTERRUPTED = "password check interrupted"


def parse_basic(values: list[str]) -> tuple[str, str] | None:
    """Return (name, password) from exactly one `Authorization: Basic` value, else None."""
    if len(values) != 1:
        return None
    scheme, token = split_authorization(values[0])
    if scheme != "basic":
        return None
    return decode_basic(token)


class Authenticator:
    """Checks HTTP Basic credentials against admin accounts, hashing off the event loop.

    Identical credentials checked at the same time share one check, and a successful check
    is remembered for `verified_ttl` seconds (keyed by an HMAC under a per-process key,
    and only while the stored hash is unchanged), so a busy admin client costs one hash.
    """

    def __init__(
        self,
        store: KeyStore,
        throttle: LoginThrottle | None = None,
        *,
        workers: int = HASH_WORKERS,
        dummy_cost: int = passwords.DEFAULT_N,
        verified_ttl: float = VERIFIED_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self._workers = workers
        self._dummy_cost = dummy_cost
        self._dummy_hash: str | None = None
        self._verified_ttl = verified_ttl
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        self._memo_key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[str, float]] = {}
        self._checking: dict[bytes, asyncio.Future[_Outcome]] = {}

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: own the password-hashing thread pool for the app's lifetime."""
        self._executor = ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="keygate-scrypt"
        )
        try:
            yield
        finally:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True, cancel_futures=True)
            self._verified.clear()

    async def _verify_in_pool(self, password: str, encoded: str) -> bool:
        """Run scrypt in the hashing pool (never on the event loop)."""
        if self._executor is None:
            raise RuntimeError("the admin app's authenticator is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, passwords.verify_password, password, encoded
        )

    async def _dummy(self) -> str:
        """Return a hash to check unknown names against, so they cost as much as known ones."""
        if self._dummy_hash is None:
            if self._executor is None:
                raise RuntimeError("the admin app's authenticator is not started")
            loop = asyncio.get_running_loop()
            self._dummy_hash = await loop.run_in_executor(
                self._executor, _hash_for_dummy, self._dummy_cost
            )
        return self._dummy_hash

    def _memo(self, name: str, password: str) -> bytes:
        material = f"{name}\0{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._memo_key, material, "sha256").digest()

    def _remembered(self, memo: bytes) -> str | None:
        """Return the stored hash these credentials were last verified against, if recent."""
        entry = self._verified.get(memo)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._verified[memo]
            return None
        return entry[0]

    def _remember(self, memo: bytes, password_hash: str) -> None:
        now = self._clock()
        if len(self._verified) >= VERIFIED_MAX:
            self._verified = {k: v for k, v in self._verified.items() if v[1] > now}
            while len(self._verified) >= VERIFIED_MAX:
                del self._verified[next(iter(self._verified))]
        self._verified[memo] = (password_hash, now + self._verified_ttl)

    async def _verify(
        self, account: AdminAccount | None, password: str, remembered: str | None
    ) -> _Outcome:
        """Return the account when the password is right, else None (same cost either way)."""
        if account is None:
            await self._verify_in_pool(password, await self._dummy())
            return None
        if remembered is not None and hmac.compare_digest(remembered, account.password_hash):
            return account
        if await self._verify_in_pool(password, account.password_hash):
            return account
        return None

    async def authenticate(self, request: web.Request) -> AdminAccount:
        """Return the admin account of a request's Basic credentials or raise ApiError.

        A check is reserved with the throttle before the first await, so parallel guesses
        count against the limits of their address and account; the stored failure counts
        are then consulted, and a throttled attempt is audited and answered 429.
        Identical credentials arriving while they are being checked wait for that check.
        """
        values = request.headers.getall("Authorization", [])
        if not values:
            raise unauthorized(M_MISSING)
        return await self.check(request.remote or "?", parse_basic(values))

    async def check(self, address: str, parsed: tuple[str, str] | None) -> AdminAccount:
        """Return the admin account of (name, password) tried from `address`, or raise ApiError.

        The one path every login takes, HTTP Basic and the web page's sign-in form alike, so
        both share the throttle, the hold-back and the audit of failures. `parsed` is None
        for credentials that could not be read (counted as a failure).
        """
        typed = parsed[0] if parsed is not None and is_admin_name(parsed[0]) else None
        memo = self._memo(*parsed) if parsed is not None else None
        running = self._checking.get(memo) if memo is not None else None
        reservation = self.throttle.begin(address, typed, counted=running is None)
        future: asyncio.Future[_Outcome] | None = None
        if memo is not None and running is None:
            future = asyncio.get_running_loop().create_future()
            self._checking[memo] = future
        known = False
        wait: float | None = None
        delay = 0.0
        outcome: _Outcome = RuntimeError(M_INTERRUPTED)  # what joiners see if this is cancelled
        try:
            account = await self.store.get_admin(typed) if typed is not None else None
            known = account is not None
            trusted = (
                typed is not None
                and known
                and await self.store.trusted_login(
                    typed, address, gateway.clock.now() - TRUSTED_ADDRESS_WINDOW
                )
            )
            wait = await self.throttle.retry_after(
                self.store, reservation, account=known, trusted=trusted
            )
            if wait is not None:
                outcome = too_many_attempts(wait)
            elif parsed is None:
                outcome = unauthorized(M_MALFORMED)
            elif future is not None and memo is not None:
                outcome = await self._verify(account, parsed[1], self._remembered(memo))
                if outcome is None:
                    delay = await self._count_failure(address, typed if known else None)
        except Exception as error:
            outcome = error
        finally:
            self.throttle.end(reservation)
            if future is not None:
                self._checking.pop(memo, None)  # type: ignore[arg-type]
                if not future.done():
                    future.set_result(outcome)
        actor = typed if known else None
        if wait is not None:
            await self._throttled(address, actor, wait)
        elif parsed is None:
            await self._failed(address, None, await self._count_failure(address, None))
        elif running is not None:  # the same credentials were being checked: share the outcome
            return _account_or_raise(await asyncio.shield(running))
        elif isinstance(outcome, AdminAccount) and memo is not None:
            if self._remembered(memo) is None:  # a real password check: note the address
                await self._note_success(outcome.name, address)
            self._remember(memo, outcome.password_hash)
        elif outcome is None:
            await self._failed(address, actor, delay)
        return _account_or_raise(outcome)

    async def backend_failed(self, address: str) -> None:
        """Count, audit and hold back a sign-in the backend refused (by address only: the
        name typed may be anything, a password even)."""
        await self._failed(address, None, await self._count_failure(address, None))

    async def _note_success(self, account: str, address: str) -> None:
        """Record the address a login succeeded from (exempt from the account's lockout)."""
        try:
            await self.store.record_login_success(account, address, gateway.clock.now())
        except StoreUnavailableError as error:
            log.warning("could not record a successful admin login: %s", error)
        except Exception:
            log.exception("could not record a successful admin login")

    async def _count_failure(self, address: str, account: str | None) -> float:
        """Count a failure in the store; return its hold-back (the most when counting fails)."""
        try:
            return await self.throttle.fail(self.store, address, account)
        except StoreUnavailableError as error:
            log.warning("could not count a failed admin login: %s", error)
            return self.throttle.delay_max
        except Exception:
            log.exception("could not count a failed admin login")
            return self.throttle.delay_max

    async def _failed(self, address: str, account: str | None, delay: float) -> None:
        """Audit a failed login (already counted) and hold its answer back.

        The attempted name is recorded only when it is an existing admin: anything else
        may be a password typed into the name field.
        """
        actor = LOCAL_ACTOR + account if account is not None else UNKNOWN_ACTOR
        try:
            await self.store.append_audit(
                actor=actor, action=AUDIT_LOGIN_FAILED, details={"remote": address}
            )
        except Exception:
            log.exception("could not audit a failed admin login")
        log.warning("failed admin login for %r from %s", actor, address)
        await asyncio.sleep(delay)

    async def _throttled(self, address: str, account: str | None, wait: float) -> None:
        """Audit an attempt refused by the throttle (its password was not checked)."""
        actor = LOCAL_ACTOR + account if account is not None else UNKNOWN_ACTOR
        try:
            await self.store.append_audit(
                actor=actor,
                action=AUDIT_LOGIN_THROTTLED,
                details={"remote": address, "retry_after": retry_after_seconds(wait)},
            )
        except Exception:
            log.exception("could not audit a throttled admin login")
        log.warning("throttled admin login for %r from %s", actor, address)


_Outcome = AdminAccount | None | Exception


def _account_or_raise(outcome: _Outcome) -> AdminAccount:
    if isinstance(outcome, AdminAccount):
        return outcome
    if isinstance(outcome, Exception):
        raise outcome
    raise unauthorized(M_INVALID)


def _hash_for_dummy(cost: int) -> str:
    return passwords.hash_password(secrets.token_urlsafe(16), n=cost)


def unauthorized(message: str) -> ApiError:
    """Return the 401 error asking for Basic credentials."""
    return ApiError(401, E_UNAUTHORIZED, message, headers={"WWW-Authenticate": WWW_AUTHENTICATE})


def retry_after_seconds(wait: float) -> int:
    """Return a wait as whole seconds for Retry-After (at least 1)."""
    return max(1, math.ceil(wait))


def too_many_attempts(wait: float) -> ApiError:
    """Return the 429 error for a throttled attempt, with Retry-After in whole seconds."""
    seconds = retry_after_seconds(wait)
    return ApiError(
        429,
        E_TOO_MANY_ATTEMPTS,
        M_LOCKED,
        headers={"Retry-After": str(seconds)},
        extra={"retry_after": seconds},
    )
