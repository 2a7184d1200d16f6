"""A small in-memory 1Integrate-like REST backend: what `keygate demo` fronts."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import jwt
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)

BASE_PATH: Final = "/1Integrate/rest"
DEFAULT_ACTING_USER_HEADER: Final = "X-Acting-User"
# The demo's one built-in user (username -> password).
DEFAULT_USERS: Final[Mapping[str, str]] = {"admin": "admin"}
# The groups of the demo's users (the `groups` claim of their tokens).
DEFAULT_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {"admin": ("1int-admin",)}
# Seconds a token from POST /token stays valid.
TOKEN_LIFETIME: Final = 3600
# Tokens are RS256-signed with a key pair made when the app is built; GET /jwks publishes
# its public half so keygate (admin.sign_in: backend) can verify them.
TOKEN_ISSUER: Final = "keygate-demo-backend"
TOKEN_AUDIENCE: Final = "keygate"
RSA_KEY_BITS: Final = 2048
# The folder/object trees, one per kind of 1Integrate object.
TREE_KINDS: Final = ("rules", "datastores", "actions", "actionmaps", "sessions")
# Session actions (PUT sessions/{path}?action=...) and the status each one leads to.
# Transitions are not policed: every action is accepted in every state.
SESSION_ACTIONS: Final[Mapping[str, str]] = {
    "play": "RUNNING",
    "pause": "PAUSED",
    "stop": "STOPPED",
    "rewind": "NOT_STARTED",
}
SESSION_INITIAL_STATUS: Final = "NOT_STARTED"
# Names of the routes that answer without a token or an acting user.
PUBLIC_ROUTES: Final = frozenset({"token", "jwks"})

# Error codes (the "error" field of every JSON error body).
ERR_UNAUTHENTICATED: Final = "unauthenticated"
ERR_INVALID_TOKEN: Final = "invalid_token"
ERR_INVALID_CREDENTIALS: Final = "invalid_credentials"
ERR_AMBIGUOUS_ACTING_USER: Final = "ambiguous_acting_user"
ERR_INVALID_REQUEST: Final = "invalid_request"
ERR_INVALID_PATH: Final = "invalid_path"
ERR_INVALID_ACTION: Final = "invalid_action"
ERR_NOT_FOUND: Final = "not_found"
ERR_ALREADY_EXISTS: Final = "already_exists"
ERR_NOT_A_SESSION: Final = "not_a_session"
ERR_FOLDER_NOT_EMPTY: Final = "folder_not_empty"
ERR_IS_FOLDER: Final = "is_folder"
ERR_METHOD_NOT_ALLOWED: Final = "method_not_allowed"
ERR_TOO_LARGE: Final = "request_too_large"

_HTTP_ERROR_CODES: Final[Mapping[int, str]] = {
    404: ERR_NOT_FOUND,
    405: ERR_METHOD_NOT_ALLOWED,
    413: ERR_TOO_LARGE,
}
_WWW_AUTHENTICATE: Final = 'Bearer realm="1Integrate"'

NodeType = Literal["folder", "object"]


class DemoError(Exception):
    """A client error that the error middleware turns into a JSON response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        """Remember the HTTP status, the error code and the message."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class Node:
    """One folder or object in a tree, with its audit fields."""

    type: NodeType
    created: str
    created_by: str
    last_edited: str
    last_edited_by: str
    data: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # sessions only


@dataclass(slots=True)
class DemoState:
    """All mutable state of one demo backend application."""

    acting_user_header: str
    users: dict[str, str]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tests change them live
    token_lifetime: float = TOKEN_LIFETIME
    clock: Callable[[], float] = time.time  # unix seconds tokens are issued and checked at
    kid: str = field(default_factory=lambda: secrets.token_hex(8))
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    trees: dict[str, dict[tuple[str, ...], Node]] = field(
        default_factory=lambda: {kind: {} for kind in TREE_KINDS}
    )
    apikeys: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_apikey_id: int = 1
    # Route names that skip authentication; an app that adds routes may add theirs.
    public_routes: set[str] = field(default_factory=lambda: set(PUBLIC_ROUTES))
    # Made on first use: an RSA key costs ~40 ms of CPU, and most backends (every test's)
    # never sign a token.
    _signing_key: rsa.RSAPrivateKey | None = None

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The backend's token-signing key (fresh per backend, made when first needed)."""
        if self._signing_key is None:
            self._signing_key = rsa.generate_private_key(
                public_exponent=65537, key_size=RSA_KEY_BITS
            )
        return self._signing_key


DEMO_STATE: Final = web.AppKey("demo_state", DemoState)
ACTING_USER: Final = web.RequestKey("demo_acting_user", str)


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    """Return the current UTC time as an ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64url(raw: bytes) -> str:
    """Encode bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _make_token(state: DemoState, username: str, issued: float, expires: float) -> str:
    """Return an RS256-signed JWT for a user: subject, groups, issuer, audience, times."""
    payload = {
        "iss": TOKEN_ISSUER,
        "aud": TOKEN_AUDIENCE,
        "sub": username,
        "name": username,
        "groups": list(state.groups.get(username, ())),
        "iat": int(issued),
        "exp": int(expires),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(payload, state.signing_key, algorithm="RS256", headers={"kid": state.kid})


def public_jwks(state: DemoState) -> dict[str, Any]:
    """Return the JWKS publishing the public half of the backend's token-signing key."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(state.signing_key.public_key()))
    return {"keys": [{**jwk, "kid": state.kid, "use": "sig", "alg": "RS256"}]}


def _segments(raw: str) -> tuple[str, ...]:
    """Split a tree path into segments, refusing dot segments."""
    parts = tuple(part for part in raw.split("/") if part)
    if any(part in (".", "..") for part in parts):
        raise DemoError(400, ERR_INVALID_PATH, "Dot segments are not allowed in paths")
    return parts


def _state(request: web.Request) -> DemoState:
    """Return the demo state of the request's application."""
    return request.app[DEMO_STATE]


def _tree(request: web.Request) -> tuple[str, dict[tuple[str, ...], Node]]:
    """Return the kind named in the URL and its tree."""
    kind = request.match_info["kind"]
    return kind, _state(request).trees[kind]


def _node_json(kind: str, path: tuple[str, ...], node: Node) -> dict[str, Any]:
    """Render an object or folder header: client data plus server-owned fields."""
    body: dict[str, Any] = dict(node.data)
    body.update(
        {
            "name": path[-1] if path else "",
            "path": "/".join(path),
            "kind": kind,
            "type": node.type,
            "created": node.created,
            "createdBy": node.created_by,
            "lastEdited": node.last_edited,
            "lastEditedBy": node.last_edited_by,
        }
    )
    if node.status is not None:
        body["status"] = node.status
    return body


def _folder_json(
    kind: str, path: tuple[str, ...], node: Node | None, tree: Mapping[tuple[str, ...], Node]
) -> dict[str, Any]:
    """Render a folder with the names, paths and types of its direct children."""
    body: dict[str, Any] = (
        _node_json(kind, path, node)
        if node is not None
        else {"name": "", "path": "", "kind": kind, "type": "folder"}
    )
    depth = len(path)
    children = [
        {"name": child_path[-1], "path": "/".join(child_path), "type": child.type}
        for child_path, child in sorted(tree.items())
        if len(child_path) == depth + 1 and child_path[:depth] == path
    ]
    body["children"] = children
    return body


async def _json_object(request: web.Request, *, allow_empty: bool) -> dict[str, Any]:
    """Read the request body as a JSON object (an empty body is {} if allowed)."""
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DemoError(400, ERR_INVALID_REQUEST, f"Body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DemoError(400, ERR_INVALID_REQUEST, "Body must be a JSON object")
    return body


def _ensure_parents(tree: dict[tuple[str, ...], Node], path: tuple[str, ...], user: str) -> None:
    """Create missing parent folders of path (refusing to go through an object)."""
    stamp = _now()
    for depth in range(1, len(path)):
        parent = path[:depth]
        existing = tree.get(parent)
        if existing is None:
            tree[parent] = Node("folder", stamp, user, stamp, user)
        elif existing.type != "folder":
            raise DemoError(409, ERR_ALREADY_EXISTS, f"{'/'.join(parent)} is not a folder")


# --------------------------------------------------------------------------- middlewares


def _error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Build a JSON error response."""
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn DemoError and aiohttp's HTTP errors into JSON bodies."""
    try:
        return await handler(request)
    except DemoError as exc:
        headers = {"WWW-Authenticate": _WWW_AUTHENTICATE} if exc.status == 401 else None
        return _error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(exc.status, f"http_{exc.status}")
        keep = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error_response(exc.status, code, exc.reason, keep)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Establish the acting user from the acting-user header or a Bearer token."""
    state = _state(request)
    if request.match_info.route.name in state.public_routes:
        return await handler(request)
    acting = request.headers.getall(state.acting_user_header, [])
    if len(acting) > 1:
        raise DemoError(400, ERR_AMBIGUOUS_ACTING_USER, "More than one acting-user header")
    if acting and acting[0].strip():
        request[ACTING_USER] = acting[0].strip()
        return await handler(request)
    authorization = request.headers.get("Authorization")
    if authorization is None:
        raise DemoError(401, ERR_UNAUTHENTICATED, "Log in with POST /token or send a token")
    scheme, _, token = authorization.partition(" ")
    entry = state.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
    if entry is None or entry[1] < state.clock():
        raise DemoError(401, ERR_INVALID_TOKEN, "The token is unknown or has expired")
    request[ACTING_USER] = entry[0]
    return await handler(request)


# --------------------------------------------------------------------------- handlers


async def _login(request: web.Request) -> web.Response:
    """POST /token: exchange a username and password for a token."""
    body = await _json_object(request, allow_empty=False)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise DemoError(400, ERR_INVALID_REQUEST, "username and password must be strings")
    expected = _state(request).users.get(username)
    if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
        raise DemoError(401, ERR_INVALID_CREDENTIALS, "Wrong username or password")
    state = _state(request)
    issued = state.clock()
    expires = issued + state.token_lifetime
    token = _make_token(state, username, issued, expires)
    _state(request).tokens[token] = (username, expires)
    return web.json_response({"token": token})


async def _jwks(request: web.Request) -> web.Response:
    """GET /jwks: the public key the tokens of POST /token verify with."""
    return web.json_response(public_jwks(_state(request)))


async def _tree_get(request: web.Request) -> web.Response:
    """GET /{kind}/{path}: a folder listing or an object."""
    kind, tree = _tree(request)
    path = _segments(request.match_info.get("path", ""))
    node = tree.get(path)
    if path and node is None:
        raise DemoError(404, ERR_NOT_FOUND, f"No {kind} entry at {'/'.join(path)!r}")
    if node is None or node.type == "folder":
        return web.json_response(_folder_json(kind, path, node, tree))
    return web.json_response(_node_json(kind, path, node))


async def _tree_put(request: web.Request) -> web.Response:
    """PUT /{kind}/{path}: create or update an object (sessions also take ?action=)."""
    kind, tree = _tree(request)
    path = _segments(request.match_info.get("path", ""))
    user = request[ACTING_USER]
    if not path:
        raise DemoError(400, ERR_INVALID_PATH, "An object needs a name")
    if kind == "sessions" and "action" in request.query:
        return _session_action(tree, path, request.query["action"], user)
    data = await _json_object(request, allow_empty=True)
    stamp = _now()
    node = tree.get(path)
    if node is not None and node.type == "folder":
        raise DemoError(409, ERR_IS_FOLDER, f"{'/'.join(path)!r} is a folder")
    if node is None:
        _ensure_parents(tree, path, user)
        status = SESSION_INITIAL_STATUS if kind == "sessions" else None
        node = Node("object", stamp, user, stamp, user, data, status)
        tree[path] = node
        return web.json_response(_node_json(kind, path, node), status=201)
    node.data = data
    node.last_edited, node.last_edited_by = stamp, user
    return web.json_response(_node_json(kind, path, node))


def _session_action(
    tree: dict[tuple[str, ...], Node], path: tuple[str, ...], action: str, user: str
) -> web.Response:
    """Apply play/pause/stop/rewind to a session and record who did it."""
    status = SESSION_ACTIONS.get(action)
    if status is None:
        allowed = ", ".join(SESSION_ACTIONS)
        raise DemoError(400, ERR_INVALID_ACTION, f"Unknown action {action!r}; use {allowed}")
    node = tree.get(path)
    if node is None:
        raise DemoError(404, ERR_NOT_FOUND, f"No session at {'/'.join(path)!r}")
    if node.type != "object":
        raise DemoError(409, ERR_NOT_A_SESSION, f"{'/'.join(path)!r} is a folder")
    node.status = status
    node.last_edited, node.last_edited_by = _now(), user
    return web.json_response(_node_json("sessions", path, node))


async def _tree_post(request: web.Request) -> web.Response:
    """POST /{kind}/{path}: create a folder (and any missing parents)."""
    kind, tree = _tree(request)
    path = _segments(request.match_info.get("path", ""))
    user = request[ACTING_USER]
    if not path:
        raise DemoError(409, ERR_ALREADY_EXISTS, "The root folder always exists")
    if path in tree:
        raise DemoError(409, ERR_ALREADY_EXISTS, f"{'/'.join(path)!r} already exists")
    _ensure_parents(tree, path, user)
    stamp = _now()
    node = Node("folder", stamp, user, stamp, user)
    tree[path] = node
    return web.json_response(_folder_json(kind, path, node, tree), status=201)


async def _tree_delete(request: web.Request) -> web.Response:
    """DELETE /{kind}/{path}: remove an object or an empty folder."""
    kind, tree = _tree(request)
    path = _segments(request.match_info.get("path", ""))
    if not path:
        raise DemoError(400, ERR_INVALID_PATH, "The root folder cannot be deleted")
    node = tree.get(path)
    if node is None:
        raise DemoError(404, ERR_NOT_FOUND, f"No {kind} entry at {'/'.join(path)!r}")
    if node.type == "folder" and any(p[: len(path)] == path and p != path for p in tree):
        raise DemoError(409, ERR_FOLDER_NOT_EMPTY, f"{'/'.join(path)!r} is not empty")
    del tree[path]
    return web.json_response({"deleted": "/".join(path), "kind": kind})


async def _results_status(request: web.Request) -> web.Response:
    """GET /results/{path}/status: the run status of a session."""
    path = _segments(request.match_info["path"])
    node = _state(request).trees["sessions"].get(path)
    if node is None or node.type != "object":
        raise DemoError(404, ERR_NOT_FOUND, f"No session at {'/'.join(path)!r}")
    return web.json_response(
        {
            "session": "/".join(path),
            "status": node.status,
            "lastEdited": node.last_edited,
            "lastEditedBy": node.last_edited_by,
        }
    )


async def _apikeys_list(request: web.Request) -> web.Response:
    """GET /apikeys: the backend's own API keys."""
    return web.json_response({"apikeys": list(_state(request).apikeys.values())})


async def _apikeys_create(request: web.Request) -> web.Response:
    """POST /apikeys: create a backend API key."""
    state = _state(request)
    body = await _json_object(request, allow_empty=True)
    key_id = str(state.next_apikey_id)
    state.next_apikey_id += 1
    record: dict[str, Any] = {
        "id": key_id,
        "name": str(body.get("name", f"key-{key_id}")),
        "description": str(body.get("description", "")),
        "created": _now(),
        "createdBy": request[ACTING_USER],
    }
    state.apikeys[key_id] = record
    return web.json_response({**record, "key": secrets.token_urlsafe(24)}, status=201)


def _apikey(request: web.Request) -> dict[str, Any]:
    """Return the backend API key named in the URL, or raise 404."""
    record = _state(request).apikeys.get(request.match_info["key_id"])
    if record is None:
        raise DemoError(404, ERR_NOT_FOUND, "No such API key")
    return record


async def _apikeys_get(request: web.Request) -> web.Response:
    """GET /apikeys/{id}: one backend API key."""
    return web.json_response(_apikey(request))


async def _apikeys_update(request: web.Request) -> web.Response:
    """POST /apikeys/{id}: edit a backend API key's name or description."""
    record = _apikey(request)
    body = await _json_object(request, allow_empty=True)
    for name in ("name", "description"):
        if name in body:
            record[name] = str(body[name])
    record["lastEdited"], record["lastEditedBy"] = _now(), request[ACTING_USER]
    return web.json_response(record)


async def _apikeys_delete(request: web.Request) -> web.Response:
    """DELETE /apikeys/{id}: delete a backend API key."""
    record = _apikey(request)
    del _state(request).apikeys[record["id"]]
    return web.json_response({"deleted": record["id"]})


# --------------------------------------------------------------------------- factories


def create_demo_backend_app(
    acting_user_header: str = DEFAULT_ACTING_USER_HEADER,
    *,
    users: Mapping[str, str] | None = None,
    groups: Mapping[str, tuple[str, ...]] | None = None,
    token_lifetime: float = TOKEN_LIFETIME,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the demo backend application (fresh in-memory state and signing key, no I/O).

    `clock` (unix seconds) dates the tokens it issues: a test makes them expire when it needs.
    """
    app = web.Application(middlewares=[_json_errors, _authenticate])
    app[DEMO_STATE] = DemoState(
        acting_user_header=acting_user_header,
        users=dict(DEFAULT_USERS if users is None else users),
        groups=dict(DEFAULT_GROUPS if groups is None else groups),
        token_lifetime=token_lifetime,
        clock=clock,
    )
    kinds = "|".join(TREE_KINDS)
    base = BASE_PATH
    app.router.add_post(f"{base}/token", _login, name="token")
    app.router.add_get(f"{base}/jwks", _jwks, name="jwks")
    app.router.add_get(f"{base}/results/{{path:.+}}/status", _results_status)
    app.router.add_get(f"{base}/apikeys", _apikeys_list)
    app.router.add_post(f"{base}/apikeys", _apikeys_create)
    app.router.add_get(f"{base}/apikeys/{{key_id}}", _apikeys_get)
    app.router.add_post(f"{base}/apikeys/{{key_id}}", _apikeys_update)
    app.router.add_delete(f"{base}/apikeys/{{key_id}}", _apikeys_delete)
    for pattern in (f"{base}/{{kind:{kinds}}}", f"{base}/{{kind:{kinds}}}/{{path:.*}}"):
        resource = app.router.add_resource(pattern)
        resource.add_route("GET", _tree_get)
        resource.add_route("HEAD", _tree_get)
        resource.add_route("PUT", _tree_put)
        resource.add_route("POST", _tree_post)
        resource.add_route("DELETE", _tree_delete)
    return app


async def start_demo_backend(
    host: str, port: int, acting_user_header: str = DEFAULT_ACTING_USER_HEADER
) -> web.AppRunner:
    """Serve the demo backend on host:port (0 picks a free port); read runner.addresses."""
    runner = web.AppRunner(create_demo_backend_app(acting_user_header))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def runner_url(runner: web.AppRunner) -> str:
    """Return the http:// base URL of a started runner's first bound address."""
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
