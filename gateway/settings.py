"""Gateway config: loading `gateway.yaml`, validating every field, reporting every problem."""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import re
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.problems import ProblemsError, read_yaml
from gateway.proxy.hygiene import service_header_problem
from gateway.store.urls import ERROR_NO_ASYNCPG, POSTGRES_SCHEMES, postgres_url_problem

log = logging.getLogger("keygate.settings")
# Which secrets a load must resolve: all of them (serve, policy check), or only the store's
# (CLI commands that read and write the store and nothing else).
SecretsNeeded = Literal["all", "store"]

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
CONFIG_ENV_VAR = "KEYGATE_CONFIG"
DEFAULT_LISTEN_HOST = "0.0.0.0"
DEFAULT_LISTEN_PORT = 8080
DEFAULT_ADMIN_HOST = "127.0.0.1"
DEFAULT_ADMIN_PORT = 8081
DEFAULT_UPSTREAM_TIMEOUT = 60.0  # seconds until the upstream must start answering
DEFAULT_CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the upstream
DEFAULT_ACTING_USER_HEADER = "X-Acting-User"
# Identity headers a client might use to pose as someone; always stripped.
DEFAULT_STRIP_HEADERS = (
    "X-Forwarded-User",
    "X-Remote-User",
    "X-Auth-User",
    "X-User",
    "Remote-User",
    "X-Authenticated-User",
)
DEFAULT_POLL_INTERVAL = 0.1  # seconds between change-feed polls
DEFAULT_FEED_KEEP_ENTRIES = 10_000  # newest change-feed entries never pruned
DEFAULT_FEED_KEEP_SECONDS = 3600.0  # seconds a change-feed entry is kept at least
DEFAULT_FEED_PRUNE_INTERVAL = 60.0  # seconds between prunes of the change feed
DEFAULT_FLUSH_INTERVAL = 2.0  # seconds between usage flushes
DEFAULT_GRACE_PERIOD = 30.0  # seconds in-flight requests get on shutdown
DEFAULT_HEAD_TIMEOUT = 10.0  # seconds a client has to send a whole request head
DEFAULT_KEEPALIVE_TIMEOUT = 15.0  # seconds an idle keep-alive client connection stays open
DEFAULT_MAX_CONNECTIONS = 4096  # open client connections per worker on the proxy listener
DEFAULT_PID_FILE = "keygate.pid"  # beside the config file unless pid_file says otherwise
# Beside the config unless snapshot_file says otherwise (null: no snapshot).
DEFAULT_SNAPSHOT_FILE = "keygate-table.snapshot"
MIN_SIGNING_KEY_BYTES = 32  # bytes of an identity signing secret (HMAC-SHA256 key)
# Permission bits a secret file should not have: any access for its group or for others.
SECRET_FILE_SHARED_BITS = 0o077
DEFAULT_MAX_START_FAILURES = 5  # workers in a row dying before serving end the supervisor
DEFAULT_HANG_TIMEOUT = 10.0  # seconds a serving worker may send no heartbeat before it is killed
MIN_HANG_TIMEOUT = 2.0  # seconds; a worker beats every second, so less would kill busy ones
DEFAULT_POOL_SIZE = 256  # keep-alive connections to the upstream per process
DEFAULT_POOL_TIMEOUT = 10.0  # seconds a request waits for a free upstream connection
DEFAULT_IDLE_TIMEOUT = 15.0  # seconds an idle upstream connection is kept for reuse
DEFAULT_CLIENT_BODY_TIMEOUT = 30.0  # seconds a client's request body may send nothing (408)
DEFAULT_READ_TIMEOUT = 60.0  # seconds the upstream may stall mid-body, either direction (504)
DEFAULT_MAX_LINE_SIZE = 8190  # bytes in the upstream's status line or one header line
DEFAULT_MAX_HEADERS = 128  # header fields in one upstream response head
DEFAULT_SESSION_IDLE_TIMEOUT = 1800.0  # seconds a web session may go unused (30 min)
DEFAULT_SESSION_ABSOLUTE_TIMEOUT = 43_200.0  # seconds a web session lasts at most (12 h)
MIN_SESSION_TIMEOUT = 1.0  # seconds; the shortest idle or absolute session timeout
DEFAULT_WARN_DAYS = 14  # days before expiry a key counts as expiring (list, page, gauge)
DEFAULT_NOTIFY_DAYS = (14, 7, 1)  # days before expiry a "key expiring" event is sent, once each
MAX_EXPIRY_DAYS = 3650  # days; the furthest ahead a warning or notice can look
DEFAULT_NOTIFY_POLL = 1.0  # seconds between reads of the audit log for events to send
DEFAULT_EXPIRY_CHECK = 60.0  # seconds between checks for keys nearing expiry
# Forward-auth endpoints (gateway.proxy.forward_auth): where they answer on the proxy listener,
# which peers may ask (the front proxy: only it may vouch for X-Original-*/X-Forwarded-*), and
# how front proxies may cache the answers (no-store: a cached "allowed" outlives a revocation).
DEFAULT_FORWARD_AUTH_PREFIX = "/_keygate/"
DEFAULT_TRUSTED_PROXIES = ("127.0.0.1/32", "::1/128")
DEFAULT_FORWARD_AUTH_CACHE_CONTROL = "no-store"
MAX_FORWARD_AUTH_PREFIX = 128  # characters of forward_auth.prefix
MAX_CACHE_CONTROL = 256  # characters of forward_auth.cache_control
# Path segments of the prefix: unreserved characters only, none a dot segment, so the prefix
# is one spelling of itself that target hygiene accepts (compared with the raw target).
_FORWARD_AUTH_PREFIX = re.compile(r"/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*/)+")
M_NEEDS_REDIS = "needs the redis client: pip install 'keygate[redis]'"
M_NOT_PEM = "is not a PEM certificate bundle"
M_NOT_PEM_KEY = "is not a PEM certificate and private key (an encrypted key is not supported)"
_HEADER_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class ConfigError(ProblemsError):
    """The config failed validation; `problems` lists every problem with its location."""

    what = "config"


@dataclass(frozen=True, slots=True)
class Listener:
    """A host and TCP port to listen on."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How an https upstream is verified and what keygate shows it (paths resolved)."""

    ca_file: str | None = None  # PEM bundle to trust instead of the system's CAs
    cert_file: str | None = None  # client certificate (PEM), for upstreams that want mTLS
    key_file: str | None = None  # its private key, when not inside cert_file
    server_name: str | None = None  # SNI and the name the certificate must carry


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where and how to forward: base URL, bounds, limits, static headers (values resolved)."""

    url: str
    timeout: float  # seconds for the response head once the request is sent
    connect_timeout: float
    headers: tuple[tuple[str, str], ...]
    pool_size: int
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    client_body_timeout: float = DEFAULT_CLIENT_BODY_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_line_size: int = DEFAULT_MAX_LINE_SIZE
    max_headers: int = DEFAULT_MAX_HEADERS
    tls: UpstreamTLS = UpstreamTLS()


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Bounds on what proxy clients may hold: head time, idle keep-alive, connections."""

    head_timeout: float
    keepalive_timeout: float
    max_connections: int


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Where per-key rate-limit counts live: this process, or Redis shared by the fleet."""

    redis_url: str | None
    fail_open: bool  # Redis down: each worker holds keys to their whole limit, else to its share


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How long a signed-in session of the admin web page lasts (seconds)."""

    idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT
    absolute_timeout: float = DEFAULT_SESSION_ABSOLUTE_TIMEOUT


@dataclass(frozen=True, slots=True)
class ExpirySettings:
    """When keys count as expiring, and the days before expiry a notice is sent."""

    warn_days: int = DEFAULT_WARN_DAYS
    notify_days: tuple[int, ...] = DEFAULT_NOTIFY_DAYS
    check_interval: float = DEFAULT_EXPIRY_CHECK


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """One webhook: where events are POSTed and the secret they are signed with."""

    url: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Webhooks that receive signed key events, and how often the audit log is read."""

    webhooks: tuple[WebhookSettings, ...] = ()
    poll_interval: float = DEFAULT_NOTIFY_POLL


@dataclass(frozen=True, slots=True)
class ForwardAuthSettings:
    """Forward-auth endpoints on the proxy listener: path prefix, trusted peers, Cache-Control."""

    prefix: str = DEFAULT_FORWARD_AUTH_PREFIX
    trusted_proxies: tuple[str, ...] = DEFAULT_TRUSTED_PROXIES  # CIDRs, normalised
    cache_control: str = DEFAULT_FORWARD_AUTH_CACHE_CONTROL


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated gateway configuration."""

    path: Path
    listen: Listener
    admin: Listener
    upstream: Upstream
    client: ClientLimits
    rate_limits: RateLimits
    store_url: str
    policy_path: Path
    acting_user_header: str
    strip_headers: tuple[str, ...]
    # (key id, secret) pairs for X-Acting-User-Signature; the first signs, all are accepted.
    signing_keys: tuple[tuple[str, bytes], ...]
    anonymous: Literal["passthrough", "deny"]
    poll_interval: float
    flush_interval: float
    feed_keep_entries: int
    feed_keep_seconds: float
    feed_prune_interval: float
    grace_period: float
    max_start_failures: int
    log_level: str
    access_log: bool
    log_format: Literal["text", "json"] = "text"
    hang_timeout: float = DEFAULT_HANG_TIMEOUT  # seconds without a worker's heartbeat
    log_file: Path | None = None  # where `serve` writes every log line (None: stderr)
    pid_file: Path | None = None  # where `keygate serve` writes its pid (for `policy reload`)
    # The key-table snapshot a worker serves from when the store is unreachable at its start.
    snapshot_file: Path | None = None
    policy_watch: bool = False  # reload the policy when its file changes
    sessions: SessionSettings = SessionSettings()
    store_password: str | None = None  # PostgreSQL only, resolved from env or file
    store_schema: str | None = None  # PostgreSQL only: the schema holding keygate's tables
    expiry: ExpirySettings = ExpirySettings()
    notify: NotifySettings = NotifySettings()
    forward_auth: ForwardAuthSettings = ForwardAuthSettings()
    # Secrets left unresolved by a store-only load (their settings left out): never serve.
    deferred_secrets: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the config are resolved against."""
        return self.path.parent


def module_installed(name: str) -> bool:
    """Whether an optional dependency (an extra's package) can be imported."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def config_path_from(argument: str | None) -> Path:
    """Return the config path: the argument, else $KEYGATE_CONFIG, else config/gateway.yaml."""
    if argument:
        return Path(argument)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def is_header_name(name: str) -> bool:
    """Return True when `name` is a valid HTTP header field name (RFC 9110 token)."""
    return bool(name) and _HEADER_TOKEN.issuperset(name)


class _Reader:
    """Reads typed fields out of nested mappings, collecting located problems."""

    def __init__(self, where: str, secrets: SecretsNeeded = "all") -> None:
        self.where = where
        self.problems: list[str] = []
        self.secrets = secrets
        self.deferred: list[str] = []  # secrets left unresolved (secrets="store")

    def problem(self, location: str, message: str) -> None:
        self.problems.append(f"{self.where}: {location}: {message}")

    def missing_secret(self, location: str, message: str) -> None:
        """A secret that cannot be read: a problem, unless this load needs only the store's."""
        if self.secrets == "store" and not location.startswith("store."):
            self.deferred.append(f"{self.where}: {location}: {message}")
        else:
            self.problem(location, message)

    def section(
        self, data: Mapping[str, Any], name: str, allowed: set[str], within: str = ""
    ) -> Mapping[str, Any]:
        value = data.get(name, {})
        location = f"{within}.{name}" if within else name
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(location, "must be a mapping")
            return {}
        for unknown in sorted(set(map(str, value)) - allowed):
            self.problem(f"{location}.{unknown}", "unknown setting")
        return value

    def string(self, data: Mapping[str, Any], location: str, key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or not value:
            self.problem(f"{location}.{key}", "must be a non-empty string")
            return default
        return value

    def number(
        self, data: Mapping[str, Any], location: str, key: str, default: float, *, minimum: float
    ) -> float:
        value = data.get(key, default)
        # `not value >= minimum` also refuses NaN, which compares false with everything.
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
            self.problem(f"{location}.{key}", f"must be a number >= {minimum}")
            return default
        return float(value)

    def port(self, data: Mapping[str, Any], location: str, default: int) -> int:
        value = data.get("port", default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            self.problem(f"{location}.port", "must be an integer 0-65535")
            return default
        return value

    def boolean(self, data: Mapping[str, Any], location: str, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{location}.{key}", "must be true or false")
            return default
        return value


_TOP_LEVEL = {
    "snapshot_file",
    "listen",
    "admin",
    "upstream",
    "store",
    "policy",
    "identity",
    "anonymous",
    "feed",
    "usage",
    "shutdown",
    "supervisor",
    "client",
    "rate_limits",
    "sessions",
    "pid_file",
    "policy_watch",
    "log",
    "expiry",
    "notify",
    "forward_auth",
}


def settings_from_data(
    data: Any,
    path: Path,
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsNeeded = "all",
) -> Settings:
    """Validate parsed YAML into Settings, raising ConfigError with every problem found.

    `secrets="store"` (CLI commands that only use the store) resolves the store's secrets
    alone: any other that cannot be read is left out of the settings and listed in
    `deferred_secrets` instead of failing the load.
    """
    env = os.environ if environ is None else environ
    reader = _Reader(str(path), secrets)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path}: top level must be a mapping"])
    for unknown in sorted(set(map(str, data)) - _TOP_LEVEL):
        reader.problem(unknown, "unknown setting")

    listen_data = reader.section(data, "listen", {"host", "port"})
    listen = Listener(
        reader.string(listen_data, "listen", "host", DEFAULT_LISTEN_HOST),
        reader.port(listen_data, "listen", DEFAULT_LISTEN_PORT),
    )
    admin_data = reader.section(data, "admin", {"host", "port"})
    admin = Listener(
        reader.string(admin_data, "admin", "host", DEFAULT_ADMIN_HOST),
        reader.port(admin_data, "admin", DEFAULT_ADMIN_PORT),
    )
    upstream = _upstream(reader, data, env, path.parent)

    store_url, store_password, store_schema = _store(reader, data, env, path.parent)

    policy_value = data.get("policy", "policy.yaml")
    if not isinstance(policy_value, str) or not policy_value:
        reader.problem("policy", "must be a path to the policy YAML file")
        policy_value = "policy.yaml"
    # Absolute but not resolved: a symlink swapped to a new file (a Kubernetes ConfigMap) is
    # followed on reload.
    policy_path = Path(os.path.abspath(path.parent / policy_value))

    identity = reader.section(
        data, "identity", {"acting_user_header", "strip_headers", "signing_keys"}
    )
    signing_keys = _signing_keys(reader, identity.get("signing_keys"), path.parent, env)
    acting = reader.string(identity, "identity", "acting_user_header", DEFAULT_ACTING_USER_HEADER)
    if not is_header_name(acting):
        reader.problem("identity.acting_user_header", f"{acting!r} is not a valid header name")
    strip = identity.get("strip_headers", list(DEFAULT_STRIP_HEADERS))
    if not isinstance(strip, list) or not all(
        isinstance(h, str) and is_header_name(h) for h in strip
    ):
        reader.problem("identity.strip_headers", "must be a list of header names")
        strip = list(DEFAULT_STRIP_HEADERS)
    for name, _ in upstream.headers:
        # Service headers go with key callers only; a name keygate strips or sets itself (or
        # fills from the client's request) would let a caller choose the service's value.
        problem = service_header_problem(name, acting, strip)
        if problem is not None:
            reader.problem(f"upstream.headers.{name}", problem)

    anonymous = data.get("anonymous", "passthrough")
    if anonymous not in ("passthrough", "deny"):
        reader.problem("anonymous", "must be 'passthrough' or 'deny'")
        anonymous = "passthrough"

    feed = reader.section(
        data, "feed", {"poll_interval", "keep_entries", "keep_seconds", "prune_interval"}
    )
    usage = reader.section(data, "usage", {"flush_interval"})
    shutdown = reader.section(data, "shutdown", {"grace_period"})
    supervisor = reader.section(data, "supervisor", {"max_start_failures", "hang_timeout"})
    limits_data = reader.section(data, "rate_limits", {"redis_url", "fail_open"})
    redis_url = limits_data.get("redis_url")
    if redis_url is not None and (
        not isinstance(redis_url, str) or not redis_url.startswith(("redis://", "rediss://"))
    ):
        reader.problem("rate_limits.redis_url", "must be a redis:// or rediss:// URL")
        redis_url = None
    if redis_url is not None and not module_installed("redis"):
        reader.problem("rate_limits.redis_url", M_NEEDS_REDIS)
    rate_limits = RateLimits(
        redis_url=redis_url, fail_open=reader.boolean(limits_data, "rate_limits", "fail_open", True)
    )
    client_data = reader.section(
        data, "client", {"head_timeout", "keepalive_timeout", "max_connections"}
    )
    client = ClientLimits(
        head_timeout=reader.number(
            client_data, "client", "head_timeout", DEFAULT_HEAD_TIMEOUT, minimum=0.1
        ),
        keepalive_timeout=reader.number(
            client_data, "client", "keepalive_timeout", DEFAULT_KEEPALIVE_TIMEOUT, minimum=0.1
        ),
        max_connections=int(
            reader.number(
                client_data, "client", "max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1
            )
        ),
    )
    sessions = _sessions(reader, data)
    log = reader.section(data, "log", {"level", "access_log", "format", "file"})
    log_format = log.get("format", "text")
    if log_format not in ("text", "json"):
        reader.problem("log.format", "must be text or json")
        log_format = "text"
    level = reader.string(log, "log", "level", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        reader.problem("log.level", "must be debug, info, warning or error")
        level = "info"

    settings = Settings(
        path=path,
        listen=listen,
        admin=admin,
        upstream=upstream,
        client=client,
        rate_limits=rate_limits,
        store_url=store_url,
        policy_path=policy_path,
        acting_user_header=acting,
        strip_headers=tuple(strip),
        signing_keys=signing_keys,
        anonymous=anonymous,
        poll_interval=reader.number(
            feed, "feed", "poll_interval", DEFAULT_POLL_INTERVAL, minimum=0.01
        ),
        feed_keep_entries=int(
            reader.number(feed, "feed", "keep_entries", DEFAULT_FEED_KEEP_ENTRIES, minimum=1)
        ),
        feed_keep_seconds=reader.number(
            feed, "feed", "keep_seconds", DEFAULT_FEED_KEEP_SECONDS, minimum=1
        ),
        feed_prune_interval=reader.number(
            feed, "feed", "prune_interval", DEFAULT_FEED_PRUNE_INTERVAL, minimum=0.1
        ),
        flush_interval=reader.number(
            usage, "usage", "flush_interval", DEFAULT_FLUSH_INTERVAL, minimum=0.05
        ),
        grace_period=reader.number(
            shutdown, "shutdown", "grace_period", DEFAULT_GRACE_PERIOD, minimum=0
        ),
        max_start_failures=int(
            reader.number(
                supervisor,
                "supervisor",
                "max_start_failures",
                DEFAULT_MAX_START_FAILURES,
                minimum=1,
            )
        ),
        hang_timeout=reader.number(
            supervisor,
            "supervisor",
            "hang_timeout",
            DEFAULT_HANG_TIMEOUT,
            minimum=MIN_HANG_TIMEOUT,
        ),
        log_level=level,
        access_log=reader.boolean(log, "log", "access_log", True),
        log_format=log_format,
        log_file=_log_file(reader, log, path.parent),
        pid_file=_pid_file(reader, data, path.parent),
        snapshot_file=_snapshot_file(reader, data, path.parent),
        policy_watch=_flag(reader, data, "policy_watch"),
        sessions=sessions,
        store_password=store_password,
        store_schema=store_schema,
        expiry=_expiry(reader, data),
        notify=_notify(reader, data, env, path.parent),
        forward_auth=_forward_auth(reader, data),
        deferred_secrets=tuple(reader.deferred),
    )
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def _days(reader: _Reader, value: Any, location: str) -> int | None:
    """Return a whole number of days from 1 to MAX_EXPIRY_DAYS, or None (a problem noted)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EXPIRY_DAYS:
        reader.problem(location, f"must be a whole number of days, 1-{MAX_EXPIRY_DAYS}")
        return None
    return value


def _expiry(reader: _Reader, data: Mapping[str, Any]) -> ExpirySettings:
    """Read `expiry`: warn_days, notify_days (a list) and check_interval."""
    section = reader.section(data, "expiry", {"warn_days", "notify_days", "check_interval"})
    warn = _days(reader, section.get("warn_days", DEFAULT_WARN_DAYS), "expiry.warn_days")
    listed = section.get("notify_days", list(DEFAULT_NOTIFY_DAYS))
    notify: list[int] = []
    if not isinstance(listed, list):
        reader.problem("expiry.notify_days", "must be a list of days (may be empty)")
    else:
        for index, value in enumerate(listed):
            days = _days(reader, value, f"expiry.notify_days[{index}]")
            if days is not None and days not in notify:
                notify.append(days)
    return ExpirySettings(
        warn_days=DEFAULT_WARN_DAYS if warn is None else warn,
        notify_days=tuple(sorted(notify, reverse=True)),
        check_interval=reader.number(
            section, "expiry", "check_interval", DEFAULT_EXPIRY_CHECK, minimum=0.05
        ),
    )


def _notify(
    reader: _Reader, data: Mapping[str, Any], env: Mapping[str, str], base: Path
) -> NotifySettings:
    """Read `notify`: webhooks ({url, secret: {env|file}}) and the audit poll interval.

    A URL that carries credentials (userinfo, a token in its path or query) may come from a
    secret too: `url: {env: VAR}` or `url: {file: path}`.
    """
    section = reader.section(data, "notify", {"webhooks", "poll_interval"})
    listed = section.get("webhooks", [])
    hooks: list[WebhookSettings] = []
    if not isinstance(listed, list):
        reader.problem("notify.webhooks", "must be a list of {url, secret: {env|file}}")
        listed = []
    for index, spec in enumerate(listed):
        location = f"notify.webhooks[{index}]"
        if not isinstance(spec, Mapping) or set(map(str, spec)) != {"url", "secret"}:
            reader.problem(location, "must be {url: http(s)://..., secret: {env|file}}")
            continue
        url = spec["url"]
        if isinstance(url, Mapping):
            url = _secret(reader, url, env, base, f"{location}.url")
            if url is None:
                continue
        if (
            not isinstance(url, str)
            or not url.startswith(("http://", "https://"))
            or any(c.isspace() or not c.isprintable() for c in url)
        ):
            reader.problem(f"{location}.url", "must be an http:// or https:// URL")
            continue
        secret = _secret(reader, spec["secret"], env, base, f"{location}.secret")
        if secret is not None and not secret:
            reader.problem(f"{location}.secret", "must not be empty")
        elif secret is not None:
            hooks.append(WebhookSettings(url, secret.encode()))
    return NotifySettings(
        webhooks=tuple(hooks),
        poll_interval=reader.number(
            section, "notify", "poll_interval", DEFAULT_NOTIFY_POLL, minimum=0.05
        ),
    )


def _forward_auth(reader: _Reader, data: Mapping[str, Any]) -> ForwardAuthSettings:
    """Read `forward_auth`: prefix ("/.../"), trusted_proxies (CIDRs), cache_control."""
    section = reader.section(data, "forward_auth", {"prefix", "trusted_proxies", "cache_control"})
    prefix = reader.string(section, "forward_auth", "prefix", DEFAULT_FORWARD_AUTH_PREFIX)
    if len(prefix) > MAX_FORWARD_AUTH_PREFIX or not _FORWARD_AUTH_PREFIX.fullmatch(prefix):
        reader.problem(
            "forward_auth.prefix",
            f"must start and end with '/', hold path segments of letters, digits, '.', '_', "
            f"'~' or '-' (none starting with '.'), at most {MAX_FORWARD_AUTH_PREFIX} characters",
        )
        prefix = DEFAULT_FORWARD_AUTH_PREFIX
    listed = section.get("trusted_proxies", list(DEFAULT_TRUSTED_PROXIES))
    trusted: list[str] = []
    if not isinstance(listed, list):
        reader.problem("forward_auth.trusted_proxies", "must be a list of CIDRs (may be empty)")
        listed = []
    for index, value in enumerate(listed):
        try:
            network = ipaddress.ip_network(value, strict=True) if isinstance(value, str) else None
        except ValueError as error:
            reader.problem(f"forward_auth.trusted_proxies[{index}]", f"{error}")
            continue
        if network is None:
            reader.problem(f"forward_auth.trusted_proxies[{index}]", "must be a CIDR string")
        elif str(network) not in trusted:
            trusted.append(str(network))
    cache_control = reader.string(
        section, "forward_auth", "cache_control", DEFAULT_FORWARD_AUTH_CACHE_CONTROL
    )
    if len(cache_control) > MAX_CACHE_CONTROL or not all(32 <= ord(c) < 127 for c in cache_control):
        reader.problem(
            "forward_auth.cache_control",
            f"must be printable ASCII (no CR or LF), at most {MAX_CACHE_CONTROL} characters",
        )
        cache_control = DEFAULT_FORWARD_AUTH_CACHE_CONTROL
    return ForwardAuthSettings(prefix, tuple(trusted), cache_control)


def _sessions(reader: _Reader, data: Mapping[str, Any]) -> SessionSettings:
    """Validate `sessions`: idle and absolute timeouts, the idle one no longer than the other."""
    section = reader.section(data, "sessions", {"idle_timeout", "absolute_timeout"})
    idle = reader.number(
        section,
        "sessions",
        "idle_timeout",
        DEFAULT_SESSION_IDLE_TIMEOUT,
        minimum=MIN_SESSION_TIMEOUT,
    )
    absolute = reader.number(
        section,
        "sessions",
        "absolute_timeout",
        DEFAULT_SESSION_ABSOLUTE_TIMEOUT,
        minimum=MIN_SESSION_TIMEOUT,
    )
    if idle > absolute:
        reader.problem(
            "sessions.idle_timeout", f"must not exceed sessions.absolute_timeout ({absolute:g})"
        )
    return SessionSettings(idle_timeout=idle, absolute_timeout=absolute)


def _store(
    reader: _Reader, data: Mapping[str, Any], env: Mapping[str, str], base: Path
) -> tuple[str, str | None, str | None]:
    """Validate the store section: its URL, and for PostgreSQL the password and schema."""
    section = reader.section(data, "store", {"url", "password", "schema"})
    if isinstance(section.get("url"), Mapping):
        # A URL that carries a password comes from a secret: {env: VAR} or {file: path}.
        url = _secret(reader, section["url"], env, base, "store.url") or ""
    else:
        url = reader.string(section, "store", "url", "") if "url" in section else ""
    postgres = url.split("://", 1)[0].lower() in POSTGRES_SCHEMES and "://" in url
    if "url" not in section:
        reader.problem("store.url", "is required (e.g. sqlite:///keygate.db)")
    elif postgres:
        problem = postgres_url_problem(url)
        if problem is not None:
            reader.problem("store.url", problem)
        elif not module_installed("asyncpg"):
            reader.problem("store.url", ERROR_NO_ASYNCPG)
    elif url and not url.startswith("sqlite:///"):
        reader.problem(
            "store.url",
            "must start with sqlite:/// or postgresql:// (e.g. sqlite:///keygate.db)",
        )
    password: str | None = None
    schema: str | None = None
    if not postgres:
        for key in ("password", "schema"):
            if key in section:
                reader.problem(f"store.{key}", "is for a postgresql:// store only")
        return url, None, None
    if "password" in section:
        password = _secret(reader, section["password"], env, base, "store.password")
    if "schema" in section:
        schema = reader.string(section, "store", "schema", "")
        if schema and not (schema.isidentifier() and schema.isascii() and len(schema) <= 63):
            reader.problem("store.schema", "must be a plain identifier (letters, digits, _)")
        schema = schema or None
    return url, password, schema


def _secret(
    reader: _Reader, spec: Any, env: Mapping[str, str], base: Path, location: str
) -> str | None:
    """Resolve `{env: VARIABLE}` or `{file: path}` (relative to the config) to its text."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or not {"env", "file"} & set(spec):
        reader.problem(location, "must be {env: VARIABLE} or {file: path}")
        return None
    if "env" in spec:
        value = env.get(str(spec["env"]))
        if value is None:
            reader.missing_secret(location, f"environment variable {spec['env']!r} is not set")
        return value
    file = base / str(spec["file"])
    try:
        text = read_secret_file(file, location).decode("utf-8")
        # One trailing newline is how secret files are usually written; it is not the secret
        # (a CRLF too: newlines are read as text mode reads them, CRLF and CR as "\n").
        return text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as error:
        reader.missing_secret(location, f"cannot read {str(file)!r}: {error.__class__.__name__}")
        return None


def read_secret_file(path: Path, location: str) -> bytes:
    """Read a secret file; warn (naming it, its mode and the fix) when others may read it."""
    with path.open("rb") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        secret = file.read()
    if mode & SECRET_FILE_SHARED_BITS:
        log.warning(
            "%s: secret file %s has mode %04o, so its group or others can read it;"
            " run: chmod 600 %s",
            location,
            path,
            mode,
            path,
        )
    return secret


_UPSTREAM_KEYS = {
    "url",
    "timeout",
    "connect_timeout",
    "headers",
    "pool_size",
    "pool_timeout",
    "idle_timeout",
    "client_body_timeout",
    "read_timeout",
    "max_line_size",
    "max_headers",
    "tls",
}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "server_name"}


def _upstream(
    reader: _Reader, data: Mapping[str, Any], env: Mapping[str, str], base: Path
) -> Upstream:
    """Validate the upstream section, resolving header values from the environment."""
    section = reader.section(data, "upstream", _UPSTREAM_KEYS)
    url = reader.string(section, "upstream", "url", "") if "url" in section else ""
    url_error: str | None = None
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as error:  # e.g. "http://[::1" or "http://host:99999"
        parts, url_error = urlsplit(""), str(error)
    if "url" not in section:
        reader.problem("upstream.url", "is required (e.g. http://127.0.0.1:9000)")
    elif not url:
        pass  # reader.string has reported it
    elif url_error is not None:
        reader.problem("upstream.url", f"{url!r} is not a valid URL: {url_error}")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem("upstream.url", f"{url!r} must be an http:// or https:// URL with a host")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        reader.problem("upstream.url", "must have no path, query or fragment (paths pass through)")
    headers: list[tuple[str, str]] = []
    raw_headers = section.get("headers", {}) or {}
    if not isinstance(raw_headers, Mapping):
        reader.problem("upstream.headers", "must be a mapping of header name to {env: VAR}")
        raw_headers = {}
    seen: set[str] = set()
    for name, spec in raw_headers.items():
        location = f"upstream.headers.{name}"
        if not isinstance(name, str) or not is_header_name(name):
            reader.problem(location, "is not a valid header name")
            continue
        if name.lower() in seen:
            reader.problem(location, "is set twice (header names ignore case)")
            continue
        seen.add(name.lower())
        if not isinstance(spec, Mapping) or len(spec) != 1 or not {"env", "value"} & set(spec):
            reader.problem(location, "must be {env: VARIABLE} or {value: text}")
            continue
        if "env" in spec:
            variable = spec["env"]
            value = env.get(str(variable))
            if value is None:
                reader.missing_secret(location, f"environment variable {variable!r} is not set")
                continue
        else:
            literal = spec["value"]
            if not isinstance(literal, str | int | float) or isinstance(literal, bool):
                reader.problem(location, "value must be text (or a number)")
                continue
            value = str(literal)
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            reader.problem(location, "value contains control characters")
            continue
        headers.append((name, value))
    pool = reader.number(section, "upstream", "pool_size", DEFAULT_POOL_SIZE, minimum=1)

    def seconds(key: str, default: float) -> float:
        return reader.number(section, "upstream", key, default, minimum=0.01)

    def count(key: str, default: int, minimum: int) -> int:
        value = section.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            reader.problem(f"upstream.{key}", f"must be an integer >= {minimum}")
            return default
        return value

    return Upstream(
        url=url.rstrip("/"),
        timeout=reader.number(
            section, "upstream", "timeout", DEFAULT_UPSTREAM_TIMEOUT, minimum=0.1
        ),
        connect_timeout=reader.number(
            section, "upstream", "connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=0.1
        ),
        headers=tuple(headers),
        pool_size=int(pool),
        pool_timeout=seconds("pool_timeout", DEFAULT_POOL_TIMEOUT),
        idle_timeout=seconds("idle_timeout", DEFAULT_IDLE_TIMEOUT),
        client_body_timeout=seconds("client_body_timeout", DEFAULT_CLIENT_BODY_TIMEOUT),
        read_timeout=seconds("read_timeout", DEFAULT_READ_TIMEOUT),
        max_line_size=count("max_line_size", DEFAULT_MAX_LINE_SIZE, 64),
        max_headers=count("max_headers", DEFAULT_MAX_HEADERS, 1),
        tls=_tls(reader, section, base, https=parts.scheme == "https"),
    )


def _tls(reader: _Reader, section: Mapping[str, Any], base: Path, *, https: bool) -> UpstreamTLS:
    """Validate `upstream.tls`: files exist (relative to the config), key needs a certificate."""
    tls = reader.section(section, "tls", _TLS_KEYS, within="upstream")
    if tls and not https:
        reader.problem("upstream.tls", "is only for an https:// upstream.url")
    files: dict[str, str | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        files[key] = None
        if key in tls:
            name = reader.string(tls, "upstream.tls", key, "")
            if not name:
                continue
            resolved = (base / name).resolve()
            if not resolved.is_file():
                reader.problem(f"upstream.tls.{key}", f"{str(resolved)!r} is not a file")
                continue
            files[key] = str(resolved)
    if "key_file" in tls and "cert_file" not in tls:
        reader.problem("upstream.tls.key_file", "needs upstream.tls.cert_file")
    server_name = ""
    if "server_name" in tls:
        server_name = reader.string(tls, "upstream.tls", "server_name", "")
    _check_tls_material(reader, files)
    return UpstreamTLS(
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        server_name=server_name or None,
    )


def _check_tls_material(reader: _Reader, files: Mapping[str, str | None]) -> None:
    """Load the TLS files as the upstream client will, so bad PEM fails here, not at start."""
    ca_file, cert_file = files.get("ca_file"), files.get("cert_file")
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, ValueError) as error:
            reader.problem("upstream.tls.ca_file", f"{M_NOT_PEM} ({error.args[-1]})")
    if cert_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # An encrypted key gets an empty password rather than a prompt on the terminal.
            context.load_cert_chain(cert_file, files.get("key_file"), password=b"")
        except (ssl.SSLError, ValueError) as error:
            where = "key_file" if files.get("key_file") else "cert_file"
            reader.problem(f"upstream.tls.{where}", f"{M_NOT_PEM_KEY} ({error.args[-1]})")


def _pid_file(reader: _Reader, data: Mapping[str, Any], base_dir: Path) -> Path:
    """The pid file path (default keygate.pid beside the config), relative to the config."""
    value = data.get("pid_file", DEFAULT_PID_FILE)
    if not isinstance(value, str) or not value:
        reader.problem("pid_file", "must be a file path")
        value = DEFAULT_PID_FILE
    return Path(os.path.abspath(base_dir / value))


def _snapshot_file(reader: _Reader, data: Mapping[str, Any], base_dir: Path) -> Path | None:
    """The key-table snapshot path, relative to the config; null turns snapshots off."""
    value = data.get("snapshot_file", DEFAULT_SNAPSHOT_FILE)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        reader.problem("snapshot_file", "must be a file path, or null for no snapshot")
        return None
    return Path(os.path.abspath(base_dir / value))


def _log_file(reader: _Reader, log: Mapping[str, Any], base_dir: Path) -> Path | None:
    """`log.file`, relative to the config: a file keygate can append to, in a directory."""
    value = log.get("file")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        reader.problem("log.file", "must be a file path")
        return None
    target = Path(os.path.abspath(base_dir / value))
    if not target.parent.is_dir():
        reader.problem("log.file", f"directory {target.parent} does not exist")
    elif target.is_dir():
        reader.problem("log.file", f"{target} is a directory, not a file")
    elif not os.access(target if target.exists() else target.parent, os.W_OK):
        reader.problem("log.file", f"{target} is not writable")
    return target


def _flag(reader: _Reader, data: Mapping[str, Any], key: str) -> bool:
    """A top-level true/false setting (default false)."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        reader.problem(key, "must be true or false")
        return False
    return value


def _signing_keys(
    reader: _Reader, data: Any, base_dir: Path, env: Mapping[str, str]
) -> tuple[tuple[str, bytes], ...]:
    """Read `identity.signing_keys`: a list of {id, env: VAR} or {id, file: PATH} secrets."""
    if data is None:
        return ()
    if not isinstance(data, list) or not data:
        reader.problem("identity.signing_keys", "must be a non-empty list of {id, env|file}")
        return ()
    keys: list[tuple[str, bytes]] = []
    for index, spec in enumerate(data):
        location = f"identity.signing_keys[{index}]"
        if not isinstance(spec, Mapping) or set(spec) not in ({"id", "env"}, {"id", "file"}):
            reader.problem(location, "must be {id: NAME, env: VARIABLE} or {id: NAME, file: PATH}")
            continue
        key_id = spec["id"]
        if not isinstance(key_id, str) or not key_id or not _HEADER_TOKEN.issuperset(key_id):
            reader.problem(f"{location}.id", "must be a short name of letters, digits, - or _")
            continue
        if any(key_id == seen for seen, _ in keys):
            reader.problem(f"{location}.id", f"{key_id!r} is used twice")
            continue
        secret: bytes | None
        if "env" in spec:
            value = env.get(str(spec["env"]))
            secret = None if value is None else value.encode()
            if secret is None:
                reader.missing_secret(location, f"environment variable {spec['env']!r} is not set")
                continue
        else:
            secret_path = base_dir / str(spec["file"])
            try:
                secret = read_secret_file(secret_path, location).rstrip(b"\r\n")
            except OSError as error:
                reader.missing_secret(location, f"cannot read {secret_path}: {error.strerror}")
                continue
        if len(secret) < MIN_SIGNING_KEY_BYTES:
            reader.problem(location, f"the secret must be at least {MIN_SIGNING_KEY_BYTES} bytes")
            continue
        keys.append((key_id, secret))
    return tuple(keys)


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, secrets: SecretsNeeded = "all"
) -> Settings:
    """Read and validate a config file; raise ConfigError listing every problem.

    `secrets="store"`: only the store's secrets must resolve (see settings_from_data).
    """
    data = read_yaml(path, ConfigError)
    return settings_from_data(data, path.resolve(), environ, secrets=secrets)
