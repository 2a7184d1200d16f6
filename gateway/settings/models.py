"""The config file as typed models: one Struct per YAML section, fields named as the YAML keys.

These models are the one table of defaults and the one declaration of each setting's type
and bounds: gateway/settings/loading.py checks a parsed file against them (every problem at
once, with its line); the cross-field rules in gateway/settings/checks.py run after.

msgspec rather than pydantic (as for the admin API's bodies): ~4x cheaper to import and ~2x
cheaper to validate, which every CLI command and every worker start pays.

A leaf whose YAML spelling differs from its loaded value carries a `Meta(extra={"load": ...})`
marker the loader acts on: `path` (resolved against the config's directory), `secret`
(`{env: VARIABLE}` or `{file: path}`, read by gateway/settings/secrets.py), `text-or-secret`
(plain text, or such a reference when it carries credentials), `header` (`{env: VARIABLE}`
or `{value: text}`). The fields a model lists in `FILLED` are set by the loader, never by YAML.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from msgspec import Meta, Struct

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
CONFIG_ENV_VAR = "KEYGATE_CONFIG"
MIN_SIGNING_KEY_BYTES = 32  # bytes of an identity signing secret (HMAC-SHA256 key)
MIN_HANG_TIMEOUT = 2.0  # seconds; a worker beats every second, so less would kill busy ones
MIN_SESSION_TIMEOUT = 1.0  # seconds; the shortest idle or absolute session timeout
MAX_EXPIRY_DAYS = 3650  # days; the furthest ahead a warning or notice can look

Text = Annotated[str, Meta(min_length=1, description="a non-empty string")]
Port = Annotated[int, Meta(ge=0, le=65535, description="an integer 0-65535")]
Days = Annotated[
    int, Meta(ge=1, le=MAX_EXPIRY_DAYS, description=f"a whole number of days, 1-{MAX_EXPIRY_DAYS}")
]
Count = Annotated[int, Meta(ge=1, description="an integer >= 1")]
# Seconds: NaN is refused (it compares false with the bound); each floor is a named type.
Seconds = Annotated[float, Meta(ge=0.01, description="a number >= 0.01")]
Seconds005 = Annotated[float, Meta(ge=0.05, description="a number >= 0.05")]
Seconds01 = Annotated[float, Meta(ge=0.1, description="a number >= 0.1")]
SecondsWhole = Annotated[float, Meta(ge=1, description="a number >= 1")]
SecondsAny = Annotated[float, Meta(ge=0, description="a number >= 0")]
HangSeconds = Annotated[
    float, Meta(ge=MIN_HANG_TIMEOUT, description=f"a number >= {MIN_HANG_TIMEOUT:g}")
]
SessionSeconds = Annotated[
    float, Meta(ge=MIN_SESSION_TIMEOUT, description=f"a number >= {MIN_SESSION_TIMEOUT:g}")
]
# A path in the YAML, relative to the config file's directory; loaded absolute but not
# symlink-resolved (a swapped symlink, as a Kubernetes ConfigMap does, is followed on reload).
ConfigPath = Annotated[Path, Meta(extra={"load": "path"}, description="a file path")]
# `{env: VARIABLE}` or `{file: path}`, read by the one secret reader.
SecretText = Annotated[str, Meta(extra={"load": "secret"})]
SecretBytes = Annotated[bytes, Meta(extra={"load": "secret"})]
# Plain text, or a secret reference when it carries credentials (a URL with a password).
TextOrSecret = Annotated[str, Meta(extra={"load": "text-or-secret"})]
HeaderValue = Annotated[str, Meta(extra={"load": "header"})]
KeyId = Annotated[
    str,
    Meta(
        min_length=1,
        pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$",
        description="a short name of letters, digits, - or _",
    ),
]


REDACTED = "<redacted>"


def url_without_secrets(url: str) -> str:
    """A URL shown as scheme://host[:port]/…: credentials, path and query may carry tokens."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return url  # a file path: nothing secret in it
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}{f':{port}' if port is not None else ''}/…"


class Section(Struct, frozen=True, forbid_unknown_fields=True):
    """A mapping in the config file: unknown keys are refused, values are typed."""

    FILLED: ClassVar[frozenset[str]] = frozenset()
    # Fields whose values a repr never shows (settings reach tracebacks and debug logs).
    SECRET: ClassVar[frozenset[str]] = frozenset()
    # URL fields shown without credentials, path or query.
    SECRET_URLS: ClassVar[frozenset[str]] = frozenset()

    def __repr__(self) -> str:
        """The section with secrets replaced by <redacted> and URLs cut to their host."""
        shown = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in self.SECRET and value:
                text = (
                    repr(dict.fromkeys(value, REDACTED))
                    if isinstance(value, dict)
                    else repr(REDACTED)
                )
            elif name in self.SECRET_URLS and isinstance(value, str) and value:
                text = repr(url_without_secrets(value))
            else:
                text = repr(value)
            shown.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"


class Listener(Section, frozen=True):
    """`listen`: where API clients connect (the proxy listener)."""

    host: Text = "0.0.0.0"  # all IPv4 interfaces
    port: Port = 8080  # 0 picks a free port


SignInMethod = Literal["local", "oidc", "backend", "trusted_header"]
# Signature algorithms a token may use: asymmetric only (never `none`, never HS* whose
# "secret" would be the public key anyone can read).
TokenAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
TokenAlgorithms = Annotated[
    tuple[TokenAlgorithm, ...], Meta(min_length=1, description="a non-empty list of algorithms")
]
DEFAULT_TOKEN_ALGORITHMS: tuple[TokenAlgorithm, ...] = ("RS256", "PS256", "ES256", "EdDSA")
MAX_TOKEN_LEEWAY = 300.0  # seconds; the most clock skew a token's exp/nbf/iat may be granted
TokenLeeway = Annotated[
    float, Meta(ge=0, le=MAX_TOKEN_LEEWAY, description=f"a number 0-{MAX_TOKEN_LEEWAY:g}")
]
SignInTimeout = Annotated[float, Meta(ge=0.1, le=60, description="a number 0.1-60")]
ClaimPath = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$",
        description="a claim name, or a dotted path such as realm_access.roles",
    ),
]


class TokenCheck(Section, frozen=True):
    """How a sign-in token is verified: a JWKS URL or a PEM public key, issuer, audience."""

    SECRET_URLS: ClassVar[frozenset[str]] = frozenset({"jwks_url"})

    jwks_url: Text | None = None  # the signer's JSON Web Key Set (keys fetched, cached)
    public_key_file: ConfigPath | None = None  # or one PEM public key
    issuer: Text | None = None  # the `iss` every token must carry (set it)
    audience: Text | None = None  # the `aud` every token must carry, when set
    algorithms: TokenAlgorithms = DEFAULT_TOKEN_ALGORITHMS
    leeway: TokenLeeway = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    timeout: SignInTimeout = 5.0  # seconds one JWKS fetch may take


class BackendSignIn(TokenCheck, frozen=True):
    """`admin.sign_in.backend`: the backend's token endpoint (1Integrate: /rest/token)."""

    SECRET_URLS: ClassVar[frozenset[str]] = frozenset({"jwks_url", "token_url"})

    token_url: Text = ""  # POSTed {"username", "password"}; answers a JWT (text or JSON)
    token_field: Text = "token"  # the field holding the JWT when the answer is JSON
    name_claim: ClaimPath = "sub"  # the claim naming the admin (audit actor backend:<name>)


class TrustedHeaderSignIn(TokenCheck, frozen=True):
    """`admin.sign_in.trusted_header`: a sign-in proxy's verified JWT, from its addresses only."""

    header: Text = "X-Auth-Request-Access-Token"  # oauth2-proxy's --set-xauthrequest header
    # CIDRs of the sign-in proxies: the connection's peer address, never a header.
    trusted_proxies: tuple[Text, ...] = ("127.0.0.1/32", "::1/128")
    name_claim: ClaimPath = "sub"  # the claim naming the admin (audit actor header:<name>)

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxies as networks (checked at load, so this cannot fail)."""
        return tuple(ipaddress.ip_network(cidr) for cidr in self.trusted_proxies)


class OidcSignIn(Section, frozen=True):
    """`admin.sign_in.oidc`: an OpenID provider (authorization code flow with PKCE)."""

    SECRET: ClassVar[frozenset[str]] = frozenset({"client_secret"})

    issuer: Text = ""  # discovery at <issuer>/.well-known/openid-configuration
    client_id: Text = ""
    client_secret: SecretText | None = None  # {env: VAR} or {file: path}; none: public client
    redirect_url: Text = ""  # https://keygate-admin.example/api/v1/session/oidc/callback
    scopes: tuple[Text, ...] = ("openid", "profile", "email")
    name: Text = "your organisation"  # shown on the page: "Sign in with <name>"
    algorithms: TokenAlgorithms = DEFAULT_TOKEN_ALGORITHMS
    leeway: TokenLeeway = 30.0  # seconds of clock skew allowed on exp, nbf and iat
    timeout: SignInTimeout = 5.0  # seconds one call to the provider may take
    name_claim: ClaimPath = "preferred_username"  # shown as the display name
    # The `aud` of the provider's JWT access tokens for keygate (a resource indicator, an
    # API's identifier): scripts may then present those as bearer tokens too. Unset: only
    # ID tokens of this client are accepted as bearer tokens. Must differ from client_id.
    access_token_audience: Text | None = None


class GrantsMapping(Section, frozen=True):
    """`admin.sign_in.grants`: which claim holds groups, who may sign in, what each may grant."""

    claim: ClaimPath = "groups"  # or a dotted path: realm_access.roles
    # Groups allowed to sign in at all; an identity in none of them is refused.
    allowed_groups: tuple[Text, ...] = ()
    # Policy roles each group may grant; "*" grants every role.
    roles: dict[str, tuple[Text, ...]] = {}


class SignInSettings(Section, frozen=True):
    """`admin.sign_in`: how administrators sign in (local accounts are the break-glass way)."""

    methods: Annotated[
        tuple[SignInMethod, ...],
        Meta(min_length=1, description="a non-empty list of local, oidc, backend, trusted_header"),
    ] = ("local",)
    grants: GrantsMapping = GrantsMapping()
    backend: BackendSignIn | None = None
    trusted_header: TrustedHeaderSignIn | None = None
    oidc: OidcSignIn | None = None


class AdminListener(Listener, frozen=True):
    """`admin`: admin API, health and metrics; keep it on loopback or a management network."""

    host: Text = "127.0.0.1"
    port: Port = 8081
    sign_in: SignInSettings = SignInSettings()


class UpstreamTLS(Section, frozen=True):
    """`upstream.tls`: how an https upstream is verified (files loaded as absolute paths)."""

    ca_file: Text | None = None  # PEM bundle to trust instead of the system's CAs
    cert_file: Text | None = None  # client certificate (PEM), for upstreams that want mTLS
    key_file: Text | None = None  # its private key, when not inside cert_file
    server_name: Text | None = None  # SNI and the name the certificate must carry


class Upstream(Section, frozen=True):
    """`upstream`: where and how to forward (base URL, bounds, limits, service headers)."""

    SECRET: ClassVar[frozenset[str]] = frozenset({"headers"})  # service credentials

    url: Text = ""  # required (checks.py says so, with an example)
    timeout: Seconds01 = 60.0  # seconds until the response head starts (then 504)
    connect_timeout: Seconds01 = 5.0  # seconds to open a TCP/TLS connection
    # Service headers sent with API-key callers' requests only: name -> {env|value}.
    headers: dict[str, HeaderValue] = {}
    pool_size: Count = 256  # keep-alive connections to the upstream per process
    pool_timeout: Seconds = 10.0  # seconds a request waits for a free upstream connection
    idle_timeout: Seconds = 15.0  # seconds an idle upstream connection is kept for reuse
    client_body_timeout: Seconds = 30.0  # seconds a client's body may send nothing (408)
    read_timeout: Seconds = 60.0  # seconds the upstream may stall mid-body (504)
    # Bytes in the upstream's status line or one header line.
    max_line_size: Annotated[int, Meta(ge=64, description="an integer >= 64")] = 8190
    max_headers: Count = 128  # header fields in one upstream response head
    tls: UpstreamTLS = UpstreamTLS()


class Store(Section, frozen=True):
    """`store`: the key store URL, and for PostgreSQL its password and schema."""

    SECRET: ClassVar[frozenset[str]] = frozenset({"password"})
    SECRET_URLS: ClassVar[frozenset[str]] = frozenset({"url"})

    url: TextOrSecret = ""  # required; sqlite:///path or postgresql://...
    password: SecretText | None = None  # PostgreSQL only
    schema: Text | None = None  # PostgreSQL only: the schema holding keygate's tables


class SigningKey(Section, frozen=True):
    """`identity.signing_keys[]`: `{id, env: VARIABLE}` or `{id, file: path}`."""

    FILLED: ClassVar[frozenset[str]] = frozenset({"secret"})
    SECRET: ClassVar[frozenset[str]] = frozenset({"secret"})

    id: KeyId
    env: Text | None = None
    file: Text | None = None
    secret: bytes = b""  # read by the loader from env or file


class Identity(Section, frozen=True):
    """`identity`: the acting-user header, headers always stripped, signing keys."""

    acting_user_header: Text = "X-Acting-User"
    # Identity headers a client might use to pose as someone; always stripped.
    strip_headers: tuple[Text, ...] = (
        "X-Forwarded-User",
        "X-Remote-User",
        "X-Auth-User",
        "X-User",
        "Remote-User",
        "X-Authenticated-User",
    )
    # For X-Acting-User-Signature; the first signs, all are accepted.
    signing_keys: Annotated[
        tuple[SigningKey, ...], Meta(min_length=1, description="a non-empty list of {id, env|file}")
    ] = ()


class Feed(Section, frozen=True):
    """`feed`: following the store's change feed."""

    poll_interval: Seconds = 0.1  # seconds between change-feed polls
    keep_entries: Count = 10_000  # newest change-feed entries never pruned
    keep_seconds: SecondsWhole = 3600.0  # seconds a change-feed entry is kept at least
    prune_interval: Seconds01 = 60.0  # seconds between prunes of the change feed


# The longest a key's hourly usage may be kept (ten years of hours per key, bounded).
USAGE_KEEP_DAYS_LIMIT = 3650
UsageDays = Annotated[
    int, Meta(ge=1, le=USAGE_KEEP_DAYS_LIMIT, description=f"an integer 1-{USAGE_KEEP_DAYS_LIMIT}")
]


class Usage(Section, frozen=True):
    """`usage`: batching of last-used times and use counts; hourly usage kept and pruned."""

    flush_interval: Seconds005 = 2.0  # seconds between usage flushes
    keep_days: UsageDays = 90  # days a key's hourly usage is kept
    prune_interval: Seconds01 = 3600.0  # seconds between prunes of the hourly usage


class Shutdown(Section, frozen=True):
    """`shutdown`: draining on SIGTERM."""

    grace_period: SecondsAny = 30.0  # seconds in-flight requests get on shutdown


class Supervisor(Section, frozen=True):
    """`supervisor`: the `--workers N` supervisor's limits."""

    max_start_failures: Count = 5  # workers in a row dying before serving end the supervisor
    hang_timeout: HangSeconds = 10.0  # seconds without a worker's heartbeat before it is killed


class ClientLimits(Section, frozen=True):
    """`client`: what proxy clients may hold, per worker."""

    head_timeout: Seconds01 = 10.0  # seconds a client has to send a whole request head
    keepalive_timeout: Seconds01 = 15.0  # seconds an idle keep-alive connection stays open
    max_connections: Count = 4096  # open client connections per worker


class RateLimits(Section, frozen=True):
    """`rate_limits`: where per-key counts live: this process, or Redis shared by the fleet."""

    SECRET_URLS: ClassVar[frozenset[str]] = frozenset({"redis_url"})

    redis_url: Text | None = None
    fail_open: bool = True  # Redis down: each worker holds keys to their whole limit


class SessionSettings(Section, frozen=True):
    """`sessions`: how long a signed-in session of the admin web page lasts (seconds)."""

    idle_timeout: SessionSeconds = 1800.0  # 30 min unused
    absolute_timeout: SessionSeconds = 43_200.0  # 12 h at most


class ExpirySettings(Section, frozen=True):
    """`expiry`: when keys count as expiring, and the days before expiry a notice is sent."""

    warn_days: Days = 14  # days before expiry a key counts as expiring (list, page, gauge)
    # Days before expiry a "key expiring" event is sent, once each (loaded newest first).
    notify_days: tuple[Days, ...] = (14, 7, 1)
    check_interval: Seconds005 = 60.0  # seconds between checks for keys nearing expiry
    # Deprecation/Sunset headers on answers to a key within warn_days of its expiry.
    sunset_headers: bool = True


class WebhookSettings(Section, frozen=True):
    """`notify.webhooks[]`: where events are POSTed and the secret they are signed with."""

    SECRET: ClassVar[frozenset[str]] = frozenset({"secret"})
    SECRET_URLS: ClassVar[frozenset[str]] = frozenset({"url"})

    url: TextOrSecret
    secret: SecretBytes


class NotifySettings(Section, frozen=True):
    """`notify`: webhooks that receive signed key events, and how often the audit log is read."""

    webhooks: tuple[WebhookSettings, ...] = ()
    poll_interval: Seconds005 = 1.0  # seconds between reads of the audit log


class Log(Section, frozen=True):
    """`log`: level, access lines, line format, and an optional file."""

    level: Text = "info"  # debug, info, warning or error (any case)
    access_log: bool = True  # one line per proxied request (never the secret)
    format: Literal["text", "json"] = "text"
    file: ConfigPath | None = None  # every log line here instead of stderr


class DecisionListener(Section, frozen=True):
    """`forward_auth.listen`: where front proxies may ask for decisions on their own listener."""

    host: Text = "127.0.0.1"  # loopback: the front proxy usually runs beside keygate
    port: Port = 8082  # 0 picks a free port; 8080 and 8081 are the proxy and admin defaults


class ForwardAuth(Section, frozen=True):
    """`forward_auth`: the endpoints a front proxy asks whether to let a request through."""

    prefix: Text = "/_keygate/"  # starts and ends with "/"; unreserved characters only
    # CIDRs of the proxies allowed to ask: the connection's peer address, never a header.
    trusted_proxies: tuple[Text, ...] = ("127.0.0.1/32", "::1/128")
    cache_control: Text = "no-store"  # Cache-Control of every answer
    # A listener for decisions only, lighter than the proxy listener; null: none (the
    # endpoints on the proxy listener are always there).
    listen: DecisionListener | None = None

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxies as networks (checked at load, so this cannot fail)."""
        return tuple(ipaddress.ip_network(cidr) for cidr in self.trusted_proxies)


class Settings(Section, frozen=True):
    """The whole config file, validated; `path` and `deferred_secrets` come from the loader."""

    FILLED: ClassVar[frozenset[str]] = frozenset({"path", "deferred_secrets"})

    path: Path = DEFAULT_CONFIG_PATH  # the config file (absolute once loaded)
    listen: Listener = Listener()
    admin: AdminListener = AdminListener()
    upstream: Upstream = Upstream()
    store: Store = Store()
    policy: ConfigPath = Path("policy.yaml")  # the route policy file
    identity: Identity = Identity()
    anonymous: Literal["passthrough", "deny"] = "passthrough"  # requests without an API key
    feed: Feed = Feed()
    usage: Usage = Usage()
    shutdown: Shutdown = Shutdown()
    supervisor: Supervisor = Supervisor()
    client: ClientLimits = ClientLimits()
    rate_limits: RateLimits = RateLimits()
    sessions: SessionSettings = SessionSettings()
    # Where `keygate serve` writes its pid (for `policy reload`).
    pid_file: ConfigPath = Path("keygate.pid")
    # The key-table snapshot served when the store is unreachable at start; null: none.
    snapshot_file: ConfigPath | None = Path("keygate-table.snapshot")
    policy_watch: bool = False  # reload the policy when its file changes
    log: Log = Log()
    expiry: ExpirySettings = ExpirySettings()
    notify: NotifySettings = NotifySettings()
    forward_auth: ForwardAuth = ForwardAuth()
    # Secrets a store-only load left unresolved (their settings left out): never serve.
    deferred_secrets: tuple[str, ...] = ()

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the config are resolved against."""
        return self.path.parent


DEFAULT_STRIP_HEADERS = Identity().strip_headers
DEFAULT_POLL_INTERVAL = Feed().poll_interval
DEFAULT_HANG_TIMEOUT = Supervisor().hang_timeout
