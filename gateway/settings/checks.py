"""Cross-field rules of the config the models cannot say, each a small function.

Each check gets the Settings built from the values that passed their model and a `report`
for located problems, and returns the Settings (normalised where a rule says so: the
upstream URL without its trailing slash, TLS files resolved, notice days newest first).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from msgspec.structs import replace

from gateway.proxy.hygiene import service_header_problem
from gateway.settings.models import Settings, TokenCheck, UpstreamTLS
from gateway.store.urls import ERROR_NO_ASYNCPG, POSTGRES_SCHEMES, postgres_url_problem

Location = tuple[str | int, ...]
Report = Callable[[Location, str], None]

M_NEEDS_REDIS = "needs the redis client: pip install 'keygate[redis]'"
M_NOT_PEM = "is not a PEM certificate bundle"
M_NOT_PEM_KEY = "is not a PEM certificate and private key (an encrypted key is not supported)"
LOG_LEVELS = ("debug", "info", "warning", "error")
_HEADER_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def module_installed(name: str) -> bool:
    """Whether an optional dependency (an extra's package) can be imported."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def is_header_name(name: str) -> bool:
    """Return True when `name` is a valid HTTP header field name (RFC 9110 token)."""
    return bool(name) and _HEADER_TOKEN.issuperset(name)


def check_upstream_url(settings: Settings, report: Report) -> Settings:
    """`upstream.url`: required, http(s) with a host, no path, query or fragment."""
    url = settings.upstream.url
    where = ("upstream", "url")
    if not url:
        report(where, "is required (e.g. http://127.0.0.1:9000)")
        return settings
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as error:  # e.g. "http://[::1" or "http://host:99999"
        report(where, f"{url!r} is not a valid URL: {error}")
        return settings
    if parts.scheme not in ("http", "https") or not parts.hostname:
        report(where, f"{url!r} must be an http:// or https:// URL with a host")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        report(where, "must have no path, query or fragment (paths pass through)")
    return replace(settings, upstream=replace(settings.upstream, url=url.rstrip("/")))


def check_upstream_headers(settings: Settings, report: Report) -> Settings:
    """Service headers: valid names, each once in any case, none keygate strips or sets."""
    seen: set[str] = set()
    identity = settings.identity
    for name in settings.upstream.headers:
        where: Location = ("upstream", "headers", name)
        if not is_header_name(name):
            report(where, "is not a valid header name")
        elif name.lower() in seen:
            report(where, "is set twice (header names ignore case)")
        else:
            seen.add(name.lower())
            # Service headers go with key callers only; a name keygate strips or sets itself
            # (or fills from the client's request) would let a caller choose the value.
            problem = service_header_problem(
                name, identity.acting_user_header, identity.strip_headers
            )
            if problem is not None:
                report(where, problem)
    return settings


def check_upstream_tls(settings: Settings, report: Report) -> Settings:
    """`upstream.tls`: https only; files exist (relative to the config); bad PEM fails here."""
    tls = settings.upstream.tls
    if tls == UpstreamTLS():
        return settings
    if not settings.upstream.url.startswith("https://"):
        report(("upstream", "tls"), "is only for an https:// upstream.url")
    files: dict[str, str | None] = {}
    for key in ("ca_file", "cert_file", "key_file"):
        name = getattr(tls, key)
        files[key] = None
        if name is not None:
            resolved = (settings.base_dir / name).resolve()
            if resolved.is_file():
                files[key] = str(resolved)
            else:
                report(("upstream", "tls", key), f"{str(resolved)!r} is not a file")
    if tls.key_file is not None and tls.cert_file is None:
        report(("upstream", "tls", "key_file"), "needs upstream.tls.cert_file")
    _check_tls_material(report, files)
    resolved_tls = replace(tls, **files)
    return replace(settings, upstream=replace(settings.upstream, tls=resolved_tls))


def _check_tls_material(report: Report, files: dict[str, str | None]) -> None:
    """Load the TLS files as the upstream client will, so bad PEM fails here, not at start."""
    ca_file, cert_file = files["ca_file"], files["cert_file"]
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=ca_file)
        except (ssl.SSLError, ValueError) as error:
            report(("upstream", "tls", "ca_file"), f"{M_NOT_PEM} ({error.args[-1]})")
    if cert_file is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # An encrypted key gets an empty password rather than a prompt on the terminal.
            context.load_cert_chain(cert_file, files["key_file"], password=b"")
        except (ssl.SSLError, ValueError) as error:
            where = "key_file" if files["key_file"] else "cert_file"
            report(("upstream", "tls", where), f"{M_NOT_PEM_KEY} ({error.args[-1]})")


def check_store(settings: Settings, report: Report) -> Settings:
    """`store`: a sqlite:/// or postgresql:// URL; password and schema for PostgreSQL only."""
    store = settings.store
    url = store.url
    postgres = "://" in url and url.split("://", 1)[0].lower() in POSTGRES_SCHEMES
    if not url:
        report(("store", "url"), "is required (e.g. sqlite:///keygate.db)")
    elif postgres:
        problem = postgres_url_problem(url)
        if problem is not None:
            report(("store", "url"), problem)
        elif not module_installed("asyncpg"):
            report(("store", "url"), ERROR_NO_ASYNCPG)
    elif not url.startswith("sqlite:///"):
        report(
            ("store", "url"),
            "must start with sqlite:/// or postgresql:// (e.g. sqlite:///keygate.db)",
        )
    for key in ("password", "schema"):
        if getattr(store, key) is not None and not postgres:
            report(("store", key), "is for a postgresql:// store only")
    schema = store.schema
    if (
        schema
        and postgres
        and not (schema.isidentifier() and schema.isascii() and len(schema) <= 63)
    ):
        report(("store", "schema"), "must be a plain identifier (letters, digits, _)")
    return settings


def check_identity(settings: Settings, report: Report) -> Settings:
    """`identity`: header names valid; signing key ids each used once."""
    identity = settings.identity
    acting = identity.acting_user_header
    if not is_header_name(acting):
        report(("identity", "acting_user_header"), f"{acting!r} is not a valid header name")
    for index, name in enumerate(identity.strip_headers):
        if not is_header_name(name):
            report(("identity", "strip_headers", index), f"{name!r} is not a valid header name")
    ids: set[str] = set()
    for index, key in enumerate(identity.signing_keys):
        if key.id in ids:
            report(("identity", "signing_keys", index, "id"), f"{key.id!r} is used twice")
        ids.add(key.id)
    return settings


def check_rate_limits(settings: Settings, report: Report) -> Settings:
    """`rate_limits.redis_url`: a redis:// or rediss:// URL, with the redis client installed."""
    url = settings.rate_limits.redis_url
    if url is None:
        return settings
    if not url.startswith(("redis://", "rediss://")):
        report(("rate_limits", "redis_url"), "must be a redis:// or rediss:// URL")
    elif not module_installed("redis"):
        report(("rate_limits", "redis_url"), M_NEEDS_REDIS)
    return settings


def check_sessions(settings: Settings, report: Report) -> Settings:
    """`sessions`: the idle timeout no longer than the absolute one."""
    sessions = settings.sessions
    if sessions.idle_timeout > sessions.absolute_timeout:
        report(
            ("sessions", "idle_timeout"),
            f"must not exceed sessions.absolute_timeout ({sessions.absolute_timeout:g})",
        )
    return settings


def check_log(settings: Settings, report: Report) -> Settings:
    """`log`: a known level (any case, kept lower-case); a file keygate can append to."""
    log = settings.log
    level = log.level.lower()
    if level not in LOG_LEVELS:
        report(("log", "level"), "must be debug, info, warning or error")
        level = "info"
    target = log.file
    if target is not None:
        if not target.parent.is_dir():
            report(("log", "file"), f"directory {target.parent} does not exist")
        elif target.is_dir():
            report(("log", "file"), f"{target} is a directory, not a file")
        elif not _writable(target):
            report(("log", "file"), f"{target} is not writable")
    return replace(settings, log=replace(log, level=level))


def _writable(target: Path) -> bool:
    return os.access(target if target.exists() else target.parent, os.W_OK)


def check_expiry(settings: Settings, report: Report) -> Settings:
    """`expiry.notify_days`: each day once, newest first (the order notices are due)."""
    days = tuple(sorted(set(settings.expiry.notify_days), reverse=True))
    return replace(settings, expiry=replace(settings.expiry, notify_days=days))


def check_webhooks(settings: Settings, report: Report) -> Settings:
    """`notify.webhooks[].url`: an http:// or https:// URL, no spaces or control characters."""
    for index, hook in enumerate(settings.notify.webhooks):
        url = hook.url
        if not url.startswith(("http://", "https://")) or any(
            c.isspace() or not c.isprintable() for c in url
        ):
            report(("notify", "webhooks", index, "url"), "must be an http:// or https:// URL")
    return settings


MAX_FORWARD_AUTH_PREFIX = 128  # characters of forward_auth.prefix
MAX_CACHE_CONTROL = 256  # characters of forward_auth.cache_control
# Path segments of the prefix: unreserved characters only, none a dot segment, so the prefix
# is one spelling of itself that target hygiene accepts (compared with the raw target).
_FORWARD_AUTH_PREFIX = re.compile(r"/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*/)+")


def check_forward_auth(settings: Settings, report: Report) -> Settings:
    """`forward_auth`: a plain path prefix, strict CIDR networks (normalised, each once), a
    header-safe Cache-Control."""
    forward = settings.forward_auth
    prefix = forward.prefix
    if len(prefix) > MAX_FORWARD_AUTH_PREFIX or not _FORWARD_AUTH_PREFIX.fullmatch(prefix):
        report(
            ("forward_auth", "prefix"),
            "must start and end with '/', hold path segments of letters, digits, '.', '_', "
            f"'~' or '-' (none starting with '.'), at most {MAX_FORWARD_AUTH_PREFIX} characters",
        )
    trusted: list[str] = []
    for index, cidr in enumerate(forward.trusted_proxies):
        try:
            # strict: 10.0.0.1/8 is refused (host bits set), a typo more often than an intent.
            network = str(ipaddress.ip_network(cidr, strict=True))
        except ValueError as error:
            report(("forward_auth", "trusted_proxies", index), f"{error} (e.g. 10.0.0.0/8)")
            continue
        if network not in trusted:
            trusted.append(network)
    if len(forward.cache_control) > MAX_CACHE_CONTROL or not _printable_ascii(
        forward.cache_control
    ):
        report(
            ("forward_auth", "cache_control"),
            f"must be printable ASCII (no CR or LF), at most {MAX_CACHE_CONTROL} characters",
        )
    return replace(settings, forward_auth=replace(forward, trusted_proxies=tuple(trusted)))


def _printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


# Headers a sign-in proxy's token may not be read from: credentials keygate reads otherwise.
_RESERVED_TOKEN_HEADERS = frozenset({"authorization", "cookie", "x-api-key"})


def _http_url_problem(url: str) -> str | None:
    """Why `url` is not an http(s) URL with a host, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as error:
        return f"{url!r} is not a valid URL: {error}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} must be an http:// or https:// URL with a host"
    return None


def _check_token_check(
    settings: Settings, where: Location, check: TokenCheck, report: Report
) -> TokenCheck:
    """One signer: exactly one of jwks_url and public_key_file (a PEM public key), algorithms."""
    if (check.jwks_url is None) == (check.public_key_file is None):
        report(where, "needs exactly one of jwks_url and public_key_file")
    if check.jwks_url is not None and (problem := _http_url_problem(check.jwks_url)):
        report((*where, "jwks_url"), problem)
    if check.public_key_file is not None:
        path = Path(check.public_key_file)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            report((*where, "public_key_file"), f"{str(path)!r} cannot be read ({error})")
        else:
            try:
                load_pem_public_key(text.encode("ascii"))
            except ValueError:
                report((*where, "public_key_file"), "is not a PEM public key")
    return check


def check_sign_in(settings: Settings, report: Report) -> Settings:
    """`admin.sign_in`: each method once, each configured method's section present and sound,
    groups allowed to sign in for any way in other than local accounts."""
    sign_in = settings.admin.sign_in
    base: Location = ("admin", "sign_in")
    methods = sign_in.methods
    if len(set(methods)) != len(methods):
        report((*base, "methods"), "lists a method twice")
    for name in ("backend", "trusted_header", "oidc"):
        section = getattr(sign_in, name)
        if name in methods and section is None:
            report((*base, name), f"is required when methods lists {name}")
        if section is not None and name not in methods:
            report((*base, name), f"is set but methods does not list {name}")
    if set(methods) - {"local"} and not sign_in.grants.allowed_groups:
        report(
            (*base, "grants", "allowed_groups"),
            "must list the groups that may sign in (with oidc, backend or trusted_header)",
        )
    for group, roles in sign_in.grants.roles.items():
        if not roles:
            report((*base, "grants", "roles", group), 'must list roles (or "*")')
    backend = sign_in.backend
    if backend is not None:
        where: Location = (*base, "backend")
        _check_token_check(settings, where, backend, report)
        if not backend.token_url:
            report(
                (*where, "token_url"), "is required (1Integrate: <backend>/1Integrate/rest/token)"
            )
        elif problem := _http_url_problem(backend.token_url):
            report((*where, "token_url"), problem)
    header = sign_in.trusted_header
    if header is not None:
        where = (*base, "trusted_header")
        _check_token_check(settings, where, header, report)
        if not is_header_name(header.header):
            report((*where, "header"), "is not a valid header name")
        elif header.header.lower() in _RESERVED_TOKEN_HEADERS:
            report((*where, "header"), "must not be Authorization, Cookie or X-API-Key")
        trusted: list[str] = []
        for index, cidr in enumerate(header.trusted_proxies):
            try:
                network = str(ipaddress.ip_network(cidr, strict=True))
            except ValueError as error:
                report((*where, "trusted_proxies", index), f"{error} (e.g. 10.0.0.0/8)")
                continue
            if network not in trusted:
                trusted.append(network)
        if not header.trusted_proxies:
            report((*where, "trusted_proxies"), "must list the sign-in proxy's addresses")
        else:
            header = replace(header, trusted_proxies=tuple(trusted))
    oidc = sign_in.oidc
    if oidc is not None:
        where = (*base, "oidc")
        for field in ("issuer", "client_id", "redirect_url"):
            if not getattr(oidc, field):
                report((*where, field), "is required")
        for field in ("issuer", "redirect_url"):
            value = getattr(oidc, field)
            if value and (problem := _http_url_problem(value)):
                report((*where, field), problem)
        if oidc.access_token_audience is not None and oidc.access_token_audience in (
            "",
            oidc.client_id,
        ):
            # The audience tells an access token from an ID token of this client: the same
            # value would let either pass for the other.
            report(
                (*where, "access_token_audience"),
                "must be the API's own audience, not empty and not the client_id",
            )
    admin = replace(settings.admin, sign_in=replace(sign_in, trusted_header=header))
    return replace(settings, admin=admin)


def check_listener_ports(settings: Settings, report: Report) -> Settings:
    """No two listeners on one port: the second would fail at start with a bind error."""
    listeners = [("listen", settings.listen.host, settings.listen.port)]
    listeners.append(("admin", settings.admin.host, settings.admin.port))
    decision = settings.forward_auth.listen
    if decision is not None:
        listeners.append(("forward_auth.listen", decision.host, decision.port))
    for index, (name, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:index]:
            wildcard = {"0.0.0.0", "::"} & {host, other_host}
            if port and port == other_port and (host == other_host or wildcard):
                path = (
                    ("forward_auth", "listen", "port")
                    if name == "forward_auth.listen"
                    else (
                        name,
                        "port",
                    )
                )
                report(path, f"{port} is also {other}.port: each listener needs its own port")
    return settings


# In order: a rule reads values the ones before it normalised (TLS needs the URL's scheme).
CHECKS: tuple[Callable[[Settings, Report], Settings], ...] = (
    check_upstream_url,
    check_upstream_headers,
    check_upstream_tls,
    check_store,
    check_identity,
    check_rate_limits,
    check_sessions,
    check_log,
    check_expiry,
    check_webhooks,
    check_forward_auth,
    check_sign_in,
    check_listener_ports,
)
