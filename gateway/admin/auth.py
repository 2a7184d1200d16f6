"""Admin API authentication: refusing API keys, HTTP Basic for admin accounts, login throttling.

Authentication only says who is calling; what they may do (grant limits) is checked by the
handlers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys, passwords
from gateway.admin.accounts import is_admin_name
from gateway.admin.errors import (
    E_API_KEY_FORBIDDEN,
    E_TOO_MANY_ATTEMPTS,
    E_UNAUTHORIZED,
    M_API_KEY_FORBIDDEN,
    ApiError,
)
from gateway.state import ADMIN, AUTHENTICATOR
from gateway.store.base import AdminAccount, KeyStore

log = logging.getLogger("keygate.admin.auth")

REALM = "keygate admin"
WWW_AUTHENTICATE = f'Basic realm="{REALM}", charset="UTF-8"'
API_KEY_HEADER = "x-api-key"  # lower case, '_' spelled '-'
AUDIT_LOGIN_FAILED = "admin_login_failed"
UNKNOWN_ACTOR = "?"
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "metrics"})  # route names served without Basic auth

FAILURE_WINDOW = 600.0  # seconds a failed login counts against its address
FAILURES_BEFORE_LOCKOUT = 5  # failed logins per address and window before lockouts start
LOCKOUT_BASE = 1.0  # seconds of the first lockout; doubles with every further failure
LOCKOUT_MAX = 300.0  # seconds; the longest lockout
FAILURE_DELAY_BASE = 0.05  # seconds a failed attempt's answer is held back; doubles each time
FAILURE_DELAY_MAX = 2.0  # seconds; the longest hold-back of one answer
PENDING_RETRY_AFTER = 1.0  # seconds to wait when too many guesses are being checked at once
MAX_TRACKED_ADDRESSES = 10_000  # addresses remembered by the throttle (memory bound)
HASH_WORKERS = 2  # threads checking passwords (each scrypt check needs ~16 MiB)
VERIFIED_TTL = 60.0  # seconds a successful password check is remembered
VERIFIED_MAX = 1024  # remembered successful checks (memory bound)

M_MISSING = "admin credentials required (HTTP Basic)"
M_MALFORMED = "malformed HTTP Basic credentials"
M_INVALID = "invalid admin name or password"
M_LOCKED = "too many failed logins from this address; retry later"
M_INTERRUPTED = "password check interrupted"


def _is_key_token(value: str) -> bool:
    return keys.looks_like_key(value.strip())


def _basic_carries_key(token: str) -> bool:
    """Return True when HTTP Basic credentials smuggle an API key as name or password."""
    try:
        decoded = base64.b64decode(token.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError):
        return False
    name, _, password = decoded.partition(":")
    return _is_key_token(name) or _is_key_token(password)


def carries_api_key(request: web.Request) -> bool:
    """Return True when the request presents an API key in any form keygate accepts (or near it).

    X-API-Key (any case, `_` for `-`, any value, even empty), `Authorization: ApiKey ...`,
    `Authorization: Bearer kg_...`, a bare `kg_...` credential, or Basic with a key inside.
    """
    for name, value in request.headers.items():
        normalized = name.lower().replace("_", "-")
        if normalized == API_KEY_HEADER:
            return True
        if normalized != "authorization":
            continue
        scheme, _, token = value.strip().partition(" ")
        lowered = scheme.lower()
        if lowered == "apikey" or _is_key_token(scheme) or _is_key_token(token):
            return True
        if lowered == "basic" and _basic_carries_key(token.strip()):
            return True
    return False


def parse_basic(values: list[str]) -> tuple[str, str] | None:
    """Return (name, password) from exactly one `Authorization: Basic` value, else None."""
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip().encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError):
        return None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        return None
    return name, password


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

    async def _verify(self, name: str, password: str, remembered: str | None) -> _Outcome:
        """Return the account when the password is right, else None."""
        account = await self.store.get_admin(name) if is_admin_name(name) else None
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

        The throttle is consulted and a check reserved with no await in between, so
        parallel guesses from one address count against its limit.
        """
        values = request.headers.getall("Authorization", [])
        if not values:
            raise unauthorized(M_MISSING)
        address = request.remote or "?"
        wait = self.throttle.retry_after(address)
        if wait is not None:
            raise too_many_attempts(wait)
        parsed = parse_basic(values)
        if parsed is None:
            await self._failed(address, UNKNOWN_ACTOR, self.throttle.fail(address))
            raise unauthorized(M_MALFORMED)
        name, password = parsed
        memo = self._memo(name, password)
        running = self._checking.get(memo)
        if running is not None:  # the same credentials are being checked right now
            return _account_or_raise(await asyncio.shield(running))
        remembered = self._remembered(memo)
        self.throttle.begin(address)
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._checking[memo] = future
        delay = 0.0
        outcome: _Outcome = RuntimeError(M_INTERRUPTED)  # what joiners see if this is cancelled
        try:
            outcome = await self._verify(name, password, remembered)
            if outcome is None:
                delay = self.throttle.fail(address)
        except Exception as error:
            outcome = error
        finally:
            self.throttle.end(address)
            self._checking.pop(memo, None)
            if not future.done():
                future.set_result(outcome)
        if isinstance(outcome, AdminAccount):
            self._remember(memo, outcome.password_hash)
        elif outcome is None:
            await self._failed(address, name if is_admin_name(name) else UNKNOWN_ACTOR, delay)
        return _account_or_raise(outcome)

    async def _failed(self, address: str, actor: str, delay: float) -> None:
        """Audit a failed login (already counted) and hold its answer back."""
        try:
            await self.store.append_audit(
                actor=actor, action=AUDIT_LOGIN_FAILED, details={"remote": address}
            )
        except Exception:
            log.exception("could not audit a failed admin login")
        log.warning("failed admin login for %r from %s", actor, address)
        await asyncio.sleep(delay)


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


def too_many_attempts(wait: float) -> ApiError:
    """Return the 429 error for a throttled address, with Retry-After in whole seconds."""
    seconds = max(1, math.ceil(wait))
    return ApiError(
        429,
        E_TOO_MANY_ATTEMPTS,
        M_LOCKED,
        headers={"Retry-After": str(seconds)},
        extra={"retry_after": seconds},
    )


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse any request that carries an API key, before anything else looks at it."""
    if carries_api_key(request):
        raise ApiError(403, E_API_KEY_FORBIDDEN, M_API_KEY_FORBIDDEN)
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require admin Basic credentials on every matched route except the public ones."""
    match = request.match_info
    if match.http_exception is None and match.route.name not in PUBLIC_ROUTES:
        request[ADMIN] = await request.app[AUTHENTICATOR].authenticate(request)
    return await handler(request)


def current_admin(request: web.Request) -> AdminAccount:
    """Return the authenticated admin of a request."""
    return request[ADMIN]
