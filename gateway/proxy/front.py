"""What a front proxy's forward-auth request says about the original request (no aiohttp).

The forward-auth endpoints (gateway.proxy.forward_auth) live under a path prefix on the
proxy listener. `Routes` tells which raw targets are theirs: every spelling of the prefix
(any case, percent-encoded, the policy's canonical skeleton) is claimed, so none is ever
forwarded to the backend; only the exact spellings name an endpoint. `original_request`
reads the original method and target the way each front proxy sends them, and `TrustedPeers`
says whether a peer address may be believed at all: the X-Original-* and X-Forwarded-*
headers are only as true as the proxy that set them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import unquote

from gateway.policy.skeleton import path_skeleton

# nginx `auth_request` and ingress-nginx `auth-url`: X-Original-Method, X-Original-URI/-URL.
NGINX = "nginx"
# Traefik `forwardAuth` and Caddy `forward_auth`: X-Forwarded-Method, -Uri, -Host, -Proto.
FORWARD = "forward"
# Envoy `ext_authz` (HTTP service): the original method, `path_prefix` + the original path.
ENVOY = "envoy"
ENDPOINTS = (NGINX, FORWARD, ENVOY)
ORIGINAL_METHOD = "X-Original-Method"
ORIGINAL_URI = "X-Original-URI"
ORIGINAL_URL = "X-Original-URL"
FORWARDED_METHOD = "X-Forwarded-Method"
FORWARDED_URI = "X-Forwarded-Uri"
FORWARDED_HOST = "X-Forwarded-Host"
FORWARDED_PROTO = "X-Forwarded-Proto"
# Longest original method accepted, in characters (a method is a token; policies name short ones).
MAX_METHOD_LENGTH = 64
# Peer addresses whose trust was worked out and remembered (least recently used out).
TRUSTED_PEERS_CACHE_LIMIT = 1024

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# An absolute URL's authority as a front proxy writes it: host (or [IPv6]) and port, nothing
# else. Userinfo, `?`, `#`, `%`, `\` and the rest are refused: ingress-nginx builds
# X-Original-URL from the client's Host header, and a Host of `a?x=` would otherwise move the
# original path into the query this side sees.
_AUTHORITY = re.compile(r"[A-Za-z0-9._~-]*(?:\[[0-9A-Fa-f:.]+\])?(?::[0-9]{1,5})?")
_SCHEME = re.compile(r"(?i:https?)://")


class HeaderReader(Protocol):
    """The one method of a request's header mapping (multidict) read here."""

    def getall(self, key: str, default: Sequence[str], /) -> list[str] | Sequence[str]:
        """Every value of header `key`, in order; `default` when there is none."""
        ...


class BadForwardAuthRequest(ValueError):
    """The front proxy's request does not say what the original request was (400)."""


def _one(headers: HeaderReader, name: str) -> str:
    """Return the single, non-empty value of header `name`, or raise naming it."""
    values = headers.getall(name, ())
    if not values:
        raise BadForwardAuthRequest(f"the {name} header is missing")
    return _single(name, values)


def _single(name: str, values: Sequence[str]) -> str:
    """Return the one non-empty value of header `name` among its `values`, or raise."""
    if len(values) > 1:
        raise BadForwardAuthRequest(f"the {name} header is sent more than once")
    value = values[0].strip()
    if not value:
        raise BadForwardAuthRequest(f"the {name} header is empty")
    return value


def _optional(headers: HeaderReader, name: str) -> str | None:
    """Return the single value of header `name`, None when absent; raise when duplicated."""
    values = headers.getall(name, ())
    return _single(name, values) if values else None


def _method(headers: HeaderReader, name: str) -> str:
    """Return the original method from header `name`: one HTTP token, bounded."""
    method = _one(headers, name)
    if len(method) > MAX_METHOD_LENGTH or not _TOKEN.fullmatch(method):
        raise BadForwardAuthRequest(
            f"the {name} header must be one HTTP method (a token of at most "
            f"{MAX_METHOD_LENGTH} characters)"
        )
    return method


def target_of_url(url: str) -> str | None:
    """Return the path and query of an absolute http(s) URL, or None when it is not one."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    rest = url[scheme.end() :]
    slash = rest.find("/")
    if slash < 0 or not _AUTHORITY.fullmatch(rest[:slash]):
        return None
    return rest[slash:]


def _nginx_target(headers: HeaderReader) -> str:
    """X-Original-URI (the raw `$request_uri`), or the path and query of X-Original-URL."""
    uri = _optional(headers, ORIGINAL_URI)
    url = _optional(headers, ORIGINAL_URL)
    if url is None:
        if uri is None:
            raise BadForwardAuthRequest(f"the {ORIGINAL_URI} header (or {ORIGINAL_URL}) is missing")
        return uri
    target = target_of_url(url)
    if target is None:
        raise BadForwardAuthRequest(
            f"the {ORIGINAL_URL} header must be an absolute http(s) URL: scheme, host, "
            "optional port, then the path"
        )
    if uri is not None and uri != target:
        raise BadForwardAuthRequest(f"the {ORIGINAL_URI} and {ORIGINAL_URL} headers disagree")
    return target


def original_request(
    endpoint: str, headers: HeaderReader, own_method: str, envoy_path: str
) -> tuple[str, str]:
    """Return the original (method, raw target) a forward-auth request asks about.

    The target is returned as sent; the decision checks it as the proxy checks its own
    (target hygiene). Raises BadForwardAuthRequest naming the header that is missing,
    sent twice, empty or malformed.
    """
    if endpoint == NGINX:
        return _method(headers, ORIGINAL_METHOD), _nginx_target(headers)
    if endpoint == FORWARD:
        method = _method(headers, FORWARDED_METHOD)
        target = _one(headers, FORWARDED_URI)
        proto = _optional(headers, FORWARDED_PROTO)
        if proto is not None and proto.lower() not in ("http", "https"):
            raise BadForwardAuthRequest(f"the {FORWARDED_PROTO} header must be http or https")
        host = _optional(headers, FORWARDED_HOST)
        if host is not None and not _AUTHORITY.fullmatch(host):
            raise BadForwardAuthRequest(f"the {FORWARDED_HOST} header must be a host[:port]")
        return method, target
    return own_method, envoy_path  # ENVOY: the request's own method, its path after the prefix


class Routes:
    """Which raw targets belong to the forward-auth endpoints, and which endpoint each names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._envoy = prefix + ENVOY + "/"
        # A target can only spell the prefix when its first character after `/` does (in any
        # case), or is percent-encoded: every other target is ruled out by one set lookup.
        first = prefix[1]
        self._may_spell = frozenset({first, first.lower(), first.upper(), "%"})
        self._skeleton = path_skeleton(prefix)

    def claims(self, raw_target: str) -> bool:
        """Return True when `raw_target` is in the prefix, in any spelling (never forwarded)."""
        if raw_target.startswith(self.prefix):
            return True
        if raw_target[1:2] not in self._may_spell:
            return False
        path = raw_target.partition("?")[0]
        return (path_skeleton(unquote(path)) + "/").startswith(self._skeleton)

    def endpoint(self, raw_target: str) -> tuple[str | None, str]:
        """Return (endpoint, Envoy's original path) for a claimed target; endpoint None: no
        endpoint has that exact spelling."""
        if raw_target.startswith(self._envoy):
            return ENVOY, raw_target[len(self._envoy) - 1 :]
        if not raw_target.startswith(self.prefix):
            return None, ""
        name = raw_target[len(self.prefix) :].partition("?")[0]
        return (name if name in (NGINX, FORWARD) else None), ""


class TrustedPeers:
    """The peer networks whose forward-auth requests are believed (forward_auth.trusted_proxies)."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(network) for network in networks)
        self.trusts = functools.lru_cache(maxsize=TRUSTED_PEERS_CACHE_LIMIT)(self._trusts)

    def _trusts(self, address: str | None) -> bool:
        """Return True when the peer address is in a trusted network (an IPv4-mapped IPv6
        address counts as its IPv4 address; no address, a Unix socket: not trusted)."""
        if not address:
            return False
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in network for network in self._networks)
