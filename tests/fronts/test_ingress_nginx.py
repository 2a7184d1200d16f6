"""deploy/ingress-nginx/ingress.yaml's annotations, rendered as ingress-nginx renders them, in a
real nginx in front of the demo backend, keygate deciding.

The controller's template (ingress-nginx `rootfs/etc/nginx/template/nginx.tmpl`) turns
`auth-url` into an internal location that proxies to the URL with the client's headers plus
X-Original-URL ($scheme://$http_host$request_uri), X-Original-Method, X-Sent-From,
X-Real-IP and X-Forwarded-For, with `auth-snippet` inside it; the protected location runs
`auth_request` to it, `auth_request_set` + `proxy_set_header` per `auth-response-headers`
entry, and `configuration-snippet`. `auth_location` below is that part of the template.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support.config import REST
from support.fronts import (
    ALL_KEY,
    DEPLOY,
    IDENTITY_SPOOFS,
    LIMITED_KEY,
    PROTECTED_VARIANTS,
    SIGNING_KEY_ID,
    TARGET_SPOOFS,
    Decider,
    find_nginx,
    start_nginx,
    stopped_after,
    tool_or_skip,
    wait_listening,
)
from support.http import RawResponse, http_request, raw_request
from support.processes import free_port
from support.upstreams import RecordingBackend

from gateway.verify import SIGNATURE_HEADER, verify_acting_user

pytestmark = pytest.mark.slow

INGRESS = DEPLOY / "ingress-nginx" / "ingress.yaml"
ANNOTATION = "nginx.ingress.kubernetes.io/"
SETTLE = 0.2  # seconds a refused request is given to reach the backend anyway


def annotations() -> dict[str, str]:
    """The Ingress's nginx annotations, without their prefix."""
    document: dict[str, Any] = yaml.safe_load(INGRESS.read_text(encoding="utf-8"))
    found = document["metadata"]["annotations"]
    return {name.removeprefix(ANNOTATION): value for name, value in found.items()}


def auth_location(notes: dict[str, str], keygate_port: int, backend_port: int, port: int) -> str:
    """The server ingress-nginx renders for these annotations (auth part of nginx.tmpl)."""
    auth_url = urlsplit(notes["auth-url"])
    url = f"http://127.0.0.1:{keygate_port}{auth_url.path}"
    names = [name.strip() for name in notes["auth-response-headers"].split(",")]
    response_headers = "".join(
        f"        auth_request_set $authHeader{index} $upstream_http_"
        f"{name.lower().replace('-', '_')};\n"
        f"        proxy_set_header '{name}' $authHeader{index};\n"
        for index, name in enumerate(names)
    )
    return f"""
server {{
    listen 127.0.0.1:{port};
    location = /_external-auth-Lw-Prefix {{
        internal;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Forwarded-Proto "";
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header Host {auth_url.hostname};
        proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Sent-From "nginx-ingress-controller";
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_ssl_server_name on;
        proxy_pass_request_headers on;
        client_max_body_size 1m;
        {notes["auth-snippet"]}
        set $target {url};
        proxy_pass $target;
    }}
    location / {{
        auth_request /_external-auth-Lw-Prefix;
        auth_request_set $auth_cookie $upstream_http_set_cookie;
        add_header Set-Cookie $auth_cookie;
{response_headers}
        proxy_set_header Host $host;
        proxy_set_header X-Request-ID $request_id;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_http_version 1.1;
        {notes["configuration-snippet"]}
        proxy_pass http://127.0.0.1:{backend_port};
    }}
}}
"""


@pytest.fixture
async def ingress(
    tmp_path: Path, decider: Decider, recording_backend: RecordingBackend
) -> AsyncIterator[int]:
    """nginx running the rendered Ingress; yields its port."""
    binary = tool_or_skip("nginx", find_nginx())
    port = free_port()
    site = auth_location(annotations(), decider.port, recording_backend.port, port)
    process = start_nginx(binary, tmp_path / "ingress", site)
    with stopped_after(process):
        await wait_listening(process, port)
        yield port


async def send(port: int, method: str, target: str, headers: list[tuple[str, str]]) -> RawResponse:
    """One raw request to the rendered ingress."""
    return await raw_request(port, http_request(method, target, headers), timeout=10.0)


def test_the_annotations_name_keygate_s_nginx_endpoint_and_headers() -> None:
    notes = annotations()
    assert urlsplit(notes["auth-url"]).path == "/_keygate/nginx"
    names = {name.strip() for name in notes["auth-response-headers"].split(",")}
    assert names == {"X-Acting-User", SIGNATURE_HEADER, "X-Keygate-Key-Id"}
    assert "X-Original-URI $request_uri;" in notes["auth-snippet"]


async def test_ingress_allows_signed_strips_and_keeps_protected_paths_closed(
    ingress: int, decider: Decider, recording_backend: RecordingBackend
) -> None:
    secret = decider.secrets[ALL_KEY]
    spoofed = [(name, "mallory") for name in IDENTITY_SPOOFS]
    target = f"{REST}/_echo/x?a=1"
    response = await send(ingress, "GET", target, [("Authorization", f"Bearer {secret}"), *spoofed])
    assert response.status == 200, response.body[:300]
    (got,) = recording_backend.received
    assert got.values("X-Acting-User") == [ALL_KEY]
    (signature,) = got.values(SIGNATURE_HEADER)
    keys = {SIGNING_KEY_ID: decider.signing_key}
    assert verify_acting_user(signature, got.method, got.target, ALL_KEY, keys)
    assert got.values("Authorization") == [] and got.values("X-API-Key") == []
    assert "mallory" not in json.dumps(got.headers) and secret not in json.dumps(got.headers)
    # An anonymous request carries no identity, whatever the client sent.
    recording_backend.received.clear()
    await send(ingress, "GET", f"{REST}/sessions/", spoofed)
    (anonymous,) = recording_backend.received
    assert "mallory" not in json.dumps(anonymous.headers)
    # Protected paths in every spelling, and a client's own X-Original-URI, stay closed.
    recording_backend.received.clear()
    spoof = [(name, f"{REST}/sessions/") for name in TARGET_SPOOFS]
    refused = []
    for variant in PROTECTED_VARIANTS:
        answer = await send(ingress, "GET", variant, [("X-API-Key", secret), *spoof])
        refused.append((variant, answer.status))
    await asyncio.sleep(SETTLE)
    assert recording_backend.received == []
    assert [(v, s) for v, s in refused if s not in (400, 403)] == []


async def test_ingress_relays_a_rate_limit_as_403(ingress: int, decider: Decider) -> None:
    key = [("X-API-Key", decider.secrets[LIMITED_KEY])]
    assert (await send(ingress, "GET", f"{REST}/sessions/", key)).status == 200
    refused = await send(ingress, "GET", f"{REST}/sessions/", key)
    # ingress-nginx has no error_page for it: nginx's own 403 page, never a 500.
    assert refused.status == 403
