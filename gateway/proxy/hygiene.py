"""Header hygiene: what the proxy drops, keeps and sets on the way up and down (no aiohttp).

Client header names are compared on their letters and digits only (`X.Acting.User`,
`X_ActingUser` and `x-acting-user-` are one name), because backends and the frameworks in
front of them normalise names in different ways (CGI and WSGI turn `-` into `_`, some drop
punctuation). A name that squashes to an identity, rewrite, credential or framing header is
treated as that header.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import time
from collections.abc import Iterable
from urllib.parse import unquote_plus

from gateway.keys.keyformat import KEY_PREFIX, cut_keys, holds_key_shape
from gateway.proxy.credentials import fold_header_name, header_value_carries_key
from gateway.verify import SIGNATURE_HEADER, header_value

# Hop-by-hop headers (RFC 9110 section 7.6.1) plus those never forwarded as sent.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing headers a client may not drop by naming them in `Connection`.
FRAMING = frozenset({"content-length", "transfer-encoding", "host"})
_NOTHING: frozenset[str] = frozenset()
_AUTHORIZATION = frozenset({"authorization"})
# Forwarding metadata keygate sets itself; client-sent copies are identity spoofing.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded")
# Identity headers that common gateways, proxies and frameworks trust to name the user (or
# the client's address); always stripped, on top of `identity.strip_headers`.
TRUSTED_IDENTITY_HEADERS = (
    # oauth2-proxy
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Groups",
    "X-Forwarded-Access-Token",
    # Grafana auth proxy
    "X-WEBAUTH-USER",
    "X-WEBAUTH-EMAIL",
    "X-WEBAUTH-NAME",
    "X-WEBAUTH-ROLE",
    "X-Grafana-Org-Id",
    # Apache mod_auth*, Authelia, Traefik forward-auth
    "Remote-User",
    "Remote-Groups",
    "Remote-Name",
    "Remote-Email",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Auth-User",
    "X-User",
    "X-Username",
    "X-User-Id",
    "X-Userid",
    "X-Authenticated-User",
    "X-Authenticated-Userid",
    "X-Authenticated-Groups",
    "X-Authenticated-Scope",
    "X-Principal",
    # Kong
    "X-Consumer-ID",
    "X-Consumer-Custom-ID",
    "X-Consumer-Username",
    "X-Consumer-Groups",
    "X-Credential-Identifier",
    "X-Credential-Username",
    "X-Anonymous-Consumer",
    "X-Userinfo",
    # Spring Security pre-authentication, SiteMinder
    "SM_USER",
    "SM-User",
    "X-SM-User",
    # IIS / Azure App Service authentication
    "X-MS-CLIENT-PRINCIPAL",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-MS-CLIENT-PRINCIPAL-ID",
    "X-MS-CLIENT-PRINCIPAL-IDP",
    "X-MS-TOKEN-AAD-ID-TOKEN",
    "X-ARR-ClientCert",
    # Cloud identity-aware proxies
    "Cf-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "X-Goog-Authenticated-User-Email",
    "X-Goog-Authenticated-User-Id",
    "X-Goog-Iap-Jwt-Assertion",
    "X-Amzn-Oidc-Data",
    "X-Amzn-Oidc-Identity",
    "X-Amzn-Oidc-Accesstoken",
    "X-Pomerium-Jwt-Assertion",
    # Client certificates forwarded by TLS terminators
    "X-Forwarded-Client-Cert",
    "X-SSL-Client-Cert",
    "X-SSL-Client-S-DN",
    "X-Client-Cert",
    "X-Client-DN",
    "SSL_CLIENT_CERT",
    "SSL_CLIENT_S_DN",
    # The client's address, as other proxies report it
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Originating-IP",
)
# Squashed name prefixes of whole families of the above (e.g. every `X-Forwarded-*`).
TRUSTED_IDENTITY_PREFIXES = (
    "xforwarded",
    "xauthrequest",
    "xwebauth",
    "xremote",
    "remote",
    "xauthenticated",
    "xconsumer",
    "xcredential",
    "xmsclientprincipal",
    "xmstoken",
    "cfaccess",
    "xgoogauthenticated",
    "xgoogiap",
    "xamznoidc",
    "xpomerium",
    "xsslclient",
    "sslclient",
)
# Headers some frameworks route on instead of the request line (Symfony, Zend/Laminas, IIS URL
# Rewrite, Envoy, Spring's ForwardedHeaderFilter): the backend would serve a path the policy
# never saw. Always stripped.
URL_REWRITE_HEADERS = (
    "X-Original-URL",
    "X-Original-URI",
    "X-Original-Path",
    "X-Rewrite-URL",
    "X-Override-URL",
    "X-Forwarded-Prefix",
    "X-Forwarded-Path",
    "X-Forwarded-URI",
    "X-Forwarded-Port",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "X-Envoy-Original-Path",
    "X-Envoy-Original-Url",
    "X-HTTP-DestinationURL",
    "X-Proxy-URL",
    "X-Url-Scheme",
    "Front-End-Https",
    "Request-URI",
)
URL_REWRITE_PREFIXES = ("xoriginal", "xrewrite", "xenvoyoriginal")
# Headers that make Jersey, Spring, ASP.NET, Express and Laravel treat a request as another
# method: a key caller's request carrying one is decided for that method too (proxy.decision).
METHOD_OVERRIDE_HEADERS = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
# The query parameter some frameworks read as a method override (Laravel and Symfony, Spring's
# HiddenHttpMethodFilter, Express method-override, Rails through Rack).
METHOD_OVERRIDE_QUERY = "_method"
# Query parameter separators: `&` everywhere, `;` in older Rack and some servlet containers.
_QUERY_SEPARATORS = re.compile(r"[&;]")
# A query that may name an override: the name's letters, or percent-encoding hiding them. Most
# queries have neither and are never split (the proxy asks on every key caller's request).
_MAY_NAME_OVERRIDE = re.compile(r"method|%", re.IGNORECASE)
# The request id header: the client's when well formed, else one keygate makes; sent upstream
# and returned to the client, so one id follows a request through every log.
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Made ids: this process's random prefix and a counter (unique, and no syscall per request).
_ID_PREFIX = secrets.token_hex(6)
_id_counter = itertools.count(1)


def request_id(offered: str | None) -> str:
    """Return the client's request id when it is well formed, else a new unique one.

    An id holding a key is never taken (the caller refuses the request: `offers_a_key`), and
    one holding a part of a key past its display prefix is replaced: it would go upstream
    and into every log line.
    """
    if offered is not None and _REQUEST_ID.fullmatch(offered) and cut_keys(offered) == offered:
        return offered
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


def offers_a_key(offered: str | None) -> bool:
    """Return True when a client's request id holds something shaped like an API key.

    The id is echoed, sent upstream and logged: a key pasted into it would leak everywhere.
    """
    return offered is not None and holds_key_shape(offered)


# Header names classified and remembered (least recently used out): bounded against variety.
FOLDED_NAMES_LIMIT = 4096

KEEP = 0  # forward as sent
DROP = 1  # never forward
OVERRIDE = 2  # a method-override header: forwarded only when the policy allows its method
SESSION = 3  # the backend's own session (cookies): an anonymous caller's, never a key caller's
_SKIPPED_FOR_KEYS = frozenset({DROP, SESSION})
_SKIPPED_FOR_ANONYMOUS = frozenset({DROP})

_NOT_LETTER_OR_DIGIT = re.compile(r"[^0-9a-z]+")

folded = functools.lru_cache(maxsize=FOLDED_NAMES_LIMIT)(fold_header_name)


def squash(name: str) -> str:
    """Return a header name's letters and digits, lower case: the name as loose readers see it."""
    return _NOT_LETTER_OR_DIGIT.sub("", name.lower())


# keygate's own cookies (the admin listener's web session, plain and over TLS): never forwarded.
# Every name contains the mark, so a Cookie value without it (nearly all) costs one substring
# search and is forwarded untouched.
SESSION_COOKIE = "keygate-session"
SECURE_SESSION_COOKIE = "__Host-keygate-session"
KEYGATE_COOKIE_MARK = "keygate-session"


def without_keygate_cookies(value: str) -> str:
    """Return a Cookie value minus every `;` part mentioning keygate's cookie, the rest as sent."""
    kept = [part for part in value.split(";") if KEYGATE_COOKIE_MARK not in part]
    return ";".join(kept).lstrip()


class KeyInHeaderError(ValueError):
    """A header that would be forwarded holds a working API key (refused, never sent on)."""


# Headers forwarded only under their exact (case-insensitive) name: a look-alike
# (`Content_Length`, `Authorization_`) could be read as the real one by a loose backend, with
# a value keygate never checked.
_EXACT_ONLY = {
    squash(name): name.lower() for name in ("Content-Length", "Content-Type", "Authorization")
}
_OVERRIDE_SQUASHED = frozenset(squash(name) for name in METHOD_OVERRIDE_HEADERS)
# A backend session cookie is a second identity beside a key (the backend could act as its
# user); look-alikes (`Cookie_`, `Cookie2`) included.
_SESSION_PREFIX = "cookie"
# The caller's own login to the backend: when a service header of the same name is configured,
# an anonymous caller still sends its own (exact name only), a key caller never does.
_OWN_LOGIN = frozenset({"authorization", "cookie"})


# Connection values parsed and remembered (least recently used out): nearly every request and
# response carries one of a handful ("keep-alive", "close"); bounded against variety.
CONNECTION_VALUES_LIMIT = 256


@functools.lru_cache(maxsize=CONNECTION_VALUES_LIMIT)
def connection_named(connection: str) -> frozenset[str]:
    """Return the folded header names a `Connection` value names, minus framing headers."""
    return frozenset(fold_header_name(token.strip()) for token in connection.split(",")) - FRAMING


@functools.lru_cache(maxsize=CONNECTION_VALUES_LIMIT)
def _response_drop(connection: str) -> frozenset[str]:
    """The response header names not to relay when the upstream sent this `Connection`."""
    return HOP_BY_HOP | connection_named(connection)


class HeaderHygiene:
    """The header rules of one configuration: identity headers out, exactly one acting user in."""

    def __init__(
        self,
        acting_user_header: str,
        strip_headers: Iterable[str],
        static_headers: tuple[tuple[str, str], ...],
        signing_keys: tuple[tuple[str, bytes], ...] = (),
    ) -> None:
        self._acting_header = acting_user_header
        # The first key signs the acting user (gateway.verify says how backends check it).
        self._signing_key = signing_keys[0] if signing_keys else None
        # Names unique and none that keygate strips or sets itself (settings checks). Sent for
        # key callers only: an anonymous caller never acts as the service.
        self._static_headers = list(static_headers)
        self._service_squashed = frozenset(squash(name) for name, _ in static_headers)
        dropped = (
            *HOP_BY_HOP,
            acting_user_header,
            SIGNATURE_HEADER,
            REQUEST_ID_HEADER,
            *strip_headers,
            *FORWARDING_HEADERS,
            *TRUSTED_IDENTITY_HEADERS,
            *URL_REWRITE_HEADERS,
            "Host",
            "Expect",
            "X-API-Key",
        )
        self._dropped_squashed = frozenset(squash(name) for name in dropped)
        self._dropped_prefixes = (*TRUSTED_IDENTITY_PREFIXES, *URL_REWRITE_PREFIXES)
        self.classify = functools.lru_cache(maxsize=FOLDED_NAMES_LIMIT)(self._classify)

    def _classify(self, name: str) -> int:
        """Return KEEP, DROP, OVERRIDE or SESSION for a client header name."""
        squashed = squash(name)
        if squashed in self._dropped_squashed or squashed.startswith(self._dropped_prefixes):
            return DROP
        if squashed in self._service_squashed:
            # The service's header: no client copy goes up, except a caller's own login.
            return SESSION if name.lower() in _OWN_LOGIN else DROP
        exact = _EXACT_ONLY.get(squashed)
        if exact is not None:
            return KEEP if name.lower() == exact else DROP
        if squashed in _OVERRIDE_SQUASHED:
            return OVERRIDE
        if squashed.startswith(_SESSION_PREFIX):
            return SESSION
        return KEEP

    def upstream_headers(
        self,
        headers: Iterable[tuple[str, str]],
        *,
        method: str,
        target: str,
        request_id: str,
        connection: str | None,
        host: str | None,
        acting_user: str | None,
        drop_authorization: bool,
        peer: str | None,
        scheme: str,
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """Copy the client's headers minus hop-by-hop, credential, identity and rewrite headers
        and keygate's own cookies (and, for a key caller, the backend session cookies).

        Then set the acting user and the configured service headers (for a key caller), and
        X-Forwarded-For/-Proto/-Host; everything set here is dropped first, so no name repeats.
        Returns the headers and the values of any method-override headers among them. Raises
        KeyInHeaderError when a header that would go up holds a working API key.
        """
        extra_drop = connection_named(connection) if connection else _NOTHING
        if drop_authorization:
            extra_drop = extra_drop | _AUTHORIZATION
        classify = self.classify
        out: list[tuple[str, str]] = []
        overrides: list[str] = []
        # A key caller's identity is the key: its backend session (cookies) stays behind.
        skipped = _SKIPPED_FOR_KEYS if acting_user is not None else _SKIPPED_FOR_ANONYMOUS
        for name, value in headers:
            kind = classify(name)
            if kind in skipped or (extra_drop and folded(name) in extra_drop):
                continue
            if KEY_PREFIX in value and header_value_carries_key(value):
                raise KeyInHeaderError(name)
            if kind == OVERRIDE:
                overrides.append(value)
            elif kind == SESSION and KEYGATE_COOKIE_MARK in value:
                value = without_keygate_cookies(value)
                if not value:
                    continue
            out.append((name, value))
        if acting_user is not None:
            self.add_identity(out, method, target, acting_user)
        out.append((REQUEST_ID_HEADER, request_id))
        if peer:
            out.append(("X-Forwarded-For", peer))
        out.append(("X-Forwarded-Proto", scheme))
        if host:
            out.append(("X-Forwarded-Host", host))
        if acting_user is not None:
            out += self._static_headers
        return out, overrides

    def add_identity(
        self, out: list[tuple[str, str]], method: str, target: str, acting_user: str
    ) -> None:
        """Append the acting-user header and, when signing is configured, its signature over
        METHOD TARGET (what the backend's request line will carry) to `out`."""
        out.append((self._acting_header, acting_user))
        if self._signing_key is not None:
            key_id, secret = self._signing_key
            signed = header_value(key_id, secret, int(time.time()), method, target, acting_user)
            out.append((SIGNATURE_HEADER, signed))

    def screen(
        self,
        headers: Iterable[tuple[str, str]],
        *,
        connection: str | None,
        key_caller: bool,
        drop_authorization: bool,
    ) -> list[str]:
        """Read headers as `upstream_headers` does without copying them (forward-auth: the
        front proxy sends them on): return the method-override values among those that would
        go up; raise KeyInHeaderError when one of those holds a working API key."""
        extra_drop = connection_named(connection) if connection else _NOTHING
        if drop_authorization:
            extra_drop = extra_drop | _AUTHORIZATION
        classify = self.classify
        overrides: list[str] = []
        skipped = _SKIPPED_FOR_KEYS if key_caller else _SKIPPED_FOR_ANONYMOUS
        for name, value in headers:
            kind = classify(name)
            if kind in skipped or (extra_drop and folded(name) in extra_drop):
                continue
            if KEY_PREFIX in value and header_value_carries_key(value):
                raise KeyInHeaderError(name)
            if kind == OVERRIDE:
                overrides.append(value)
        return overrides


def service_header_problem(
    name: str, acting_user_header: str, strip_headers: Iterable[str]
) -> str | None:
    """Return why `name` cannot be an `upstream.headers` service header, or None when it can.

    Refused: any name (compared as loose readers compare, on letters and digits) that keygate
    strips or sets itself: hop-by-hop and framing headers, the credential, the acting-user and
    identity headers, X-Forwarded-*/X-Request-Id (filled from the client's request, so an
    anonymous caller would choose their value), rewrite and method-override headers, and
    look-alikes of Authorization, Cookie and Content-*.
    """
    kind = HeaderHygiene(acting_user_header, strip_headers, ()).classify(name)
    lowered = name.lower()
    if kind == KEEP and lowered not in ("content-length", "content-type"):
        return None
    if kind == SESSION and lowered == "cookie":
        return None
    return (
        "cannot be a service header: keygate strips or sets this header itself (or a "
        "look-alike of it), or it frames the request"
    )


def parameter_name(raw: str) -> str:
    """Return a raw query parameter name as the loosest common framework reads it, lower case.

    PHP (Laravel, Symfony) is the loosest: the name is percent-decoded (`+` is a space), ends
    at a NUL, loses leading spaces, has spaces and dots made `_`, and an `[` starts an array
    index (`_method[]`) or, unclosed, becomes `_` too. Others decode and compare exactly, or
    case-insensitively. Every space is trimmed and the name cut at its first `[`, so the
    result equals `_method` for whatever any of them would read as `_method` (and a little
    more: denies more, never less).
    """
    name = unquote_plus(raw) if "%" in raw or "+" in raw else raw
    name = name.partition("\x00")[0].strip().partition("[")[0]
    return name.replace(" ", "_").replace(".", "_").lower()


def query_method_overrides(raw_target: str) -> list[str]:
    """Return the (decoded) values of `_method` parameters in a raw target's query (usually none).

    Names are compared as frameworks read them (`parameter_name`), every occurrence counts.
    """
    _, mark, query = raw_target.partition("?")
    if not mark or _MAY_NAME_OVERRIDE.search(query) is None:
        return []
    found = []
    for pair in _QUERY_SEPARATORS.split(query):
        name, _, value = pair.partition("=")
        if parameter_name(name) == METHOD_OVERRIDE_QUERY:
            found.append(unquote_plus(value) if "%" in value or "+" in value else value)
    return found


def response_headers(
    headers: Iterable[tuple[str, str]], connection: str | None
) -> list[tuple[str, str]]:
    """Return the upstream's response headers minus hop-by-hop and `Connection`-named ones."""
    drop = _response_drop(connection) if connection else HOP_BY_HOP
    return [(name, value) for name, value in headers if name.lower() not in drop]
