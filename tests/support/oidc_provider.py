"""A real OpenID provider for tests: panva's oidc-provider (npm) on loopback; a headless login.

The provider's packages are installed with `npm ci` from tests/support/oidc/package-lock.json
into a cache directory (`$KEYGATE_TEST_NODE_CACHE`, else ~/.cache/keygate/), once per lock
file. Without Node or npm, or when the install fails, tests skip with an install hint;
under CI=true they fail. `python tests/support/oidc_provider.py install` installs ahead of a
run (.ci/run does).

The provider signs with an RSA key the test made, so tests can also mint tokens the
provider's key signed but with claims it would never issue (another audience, expired).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

# Only the standard library at import: .ci/run runs `install` with the system Python.
try:
    from support import npm_packages
except ImportError:  # run as a script (.ci/run): this directory is on sys.path
    import npm_packages  # type: ignore[no-redef]

if TYPE_CHECKING:
    import aiohttp
    from cryptography.hazmat.primitives.asymmetric import rsa

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
SCRIPT = OIDC_DIR / "provider.mjs"
MIN_NODE = (20, 19)  # oidc-provider 9's engines field
INSTALL_TIMEOUT = 300.0  # seconds for `npm ci` (a cold npm cache fetches ~40 packages)
READY_TIMEOUT = 20.0  # seconds for the provider to print its ready line
STOP_TIMEOUT = 5.0  # seconds for the provider to exit on SIGTERM
MAX_HOPS = 12  # redirects the headless login follows before giving up
INSTALL_HINT = (
    "the OpenID Connect tests need Node.js >= 20.19 and npm (`sudo apt-get install nodejs "
    "npm`), then `python tests/support/oidc_provider.py install` (npm ci of "
    "tests/support/oidc/ into ~/.cache/keygate/); run pytest again"
)
_FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


ProviderMissing = npm_packages.PackagesMissing


def node_version(node: str) -> tuple[int, int]:
    """Return Node's (major, minor) version."""
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
    numbers = re.findall(r"\d+", done.stdout)
    return (int(numbers[0]), int(numbers[1])) if len(numbers) >= 2 else (0, 0)


def install() -> Path:
    """Install the provider's packages (npm ci) into the cache unless there; return the dir."""
    node = shutil.which("node")
    if node is None:
        raise ProviderMissing("node or npm is not on PATH")
    if node_version(node) < MIN_NODE:
        raise ProviderMissing(f"node {node_version(node)} is older than {MIN_NODE}")
    return npm_packages.npm_ci(OIDC_DIR, "oidc-provider", "oidc-provider", INSTALL_TIMEOUT)


def provider_or_skip() -> Path:
    """Return the installed provider's directory; skip with a hint, or fail under CI=true."""
    # Looked up when called, so a test may replace this module's install.
    return npm_packages.installed_or_skip(lambda: install(), INSTALL_HINT)


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def private_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    """Return an RSA private key as a JWK (RFC 7518 section 6.3) for the provider's keystore."""
    private = key.private_numbers()
    public = private.public_numbers
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
        "n": _b64(public.n),
        "e": _b64(public.e),
        "d": _b64(private.d),
        "p": _b64(private.p),
        "q": _b64(private.q),
        "dp": _b64(private.dmp1),
        "dq": _b64(private.dmq1),
        "qi": _b64(private.iqmp),
    }


@dataclass
class Client:
    """One client registered at the provider."""

    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    workload: bool = False  # a CI job's client: client credentials only, no user, no browser

    def registration(self) -> dict[str, Any]:
        """Return the client's metadata as oidc-provider takes it."""
        if self.workload:
            return {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "redirect_uris": [],
                "grant_types": ["client_credentials"],
                "response_types": [],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }


@dataclass
class Provider:
    """A running oidc-provider: its issuer, signing key, users and process."""

    issuer: str
    key: rsa.RSAPrivateKey
    kid: str
    users_file: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def set_users(self, users: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the provider's users (name → {name, groups}); read on the next lookup."""
        partial = self.users_file.with_suffix(".tmp")
        partial.write_text(json.dumps(users))
        partial.replace(self.users_file)

    def set_groups(self, user: str, groups: Sequence[str]) -> None:
        """Change one user's groups at the provider."""
        users = json.loads(self.users_file.read_text())
        users[user]["groups"] = list(groups)
        self.set_users(users)

    def log_text(self) -> str:
        """Return what the provider wrote so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the provider (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def running_provider(
    workdir: Path,
    clients: Sequence[Client],
    users: Mapping[str, Mapping[str, Any]],
    *,
    ttl: Mapping[str, int] | None = None,
    port: int = 0,
    resources: Sequence[str] = (),
) -> Iterator[Provider]:
    """Start oidc-provider on loopback with these clients and users; stop it on exit."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    installed = provider_or_skip()
    workdir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "test-" + hashlib.sha256(str(workdir).encode()).hexdigest()[:8]
    users_file = workdir / "users.json"
    users_file.write_text(json.dumps(users))
    config = {
        "port": port,
        "users_file": str(users_file),
        "jwks": {"keys": [private_jwk(key, kid)]},
        "clients": [client.registration() for client in clients],
        "ttl": dict(ttl or {}),
        "resources": list(resources),
    }
    config_path = workdir / "provider.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "provider.log"
    env = {**os.environ, "NODE_PATH": str(installed / "node_modules")}
    with log_path.open("wb") as log:
        # The script imports oidc-provider, resolved from the cache's node_modules: run a
        # copy beside them (ES modules ignore NODE_PATH).
        script = installed / SCRIPT.name
        shutil.copyfile(SCRIPT, script)
        process = subprocess.Popen(
            ["node", str(script), str(config_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    provider: Provider | None = None
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        line = b""
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            if line.startswith(b"{"):
                break
        if not line.startswith(b"{"):
            raise RuntimeError(f"oidc-provider did not start: {log_path.read_text()[-2000:]}")
        issuer = json.loads(line)["issuer"]
        provider = Provider(issuer, key, kid, users_file, process, log_path)
        yield provider
    finally:
        if provider is not None:
            provider.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


async def follow_to(
    session: aiohttp.ClientSession, url: str, stop_prefix: str
) -> tuple[str, aiohttp.ClientResponse | None, str]:
    """GET `url`, following redirects, until one points under `stop_prefix`.

    Returns (the last URL, its answer unless it was the stop, the answer's body).
    """
    for _ in range(MAX_HOPS):
        if url.startswith(stop_prefix):
            return url, None, ""
        async with session.get(url, allow_redirects=False) as answer:
            body = await answer.text()
            location = answer.headers.get("Location")
            if answer.status in (302, 303) and location:
                url = urljoin(url, location)
                continue
            return url, answer, body
    raise AssertionError(f"more than {MAX_HOPS} redirects from {url}")


async def provider_login(
    session: aiohttp.ClientSession, authorize_url: str, user: str, stop_prefix: str
) -> str:
    """Sign `user` in at the provider's devInteractions pages (login, then consent) headlessly.

    `session` must keep cookies for IP hosts (`aiohttp.CookieJar(unsafe=True)`). Returns the
    URL the provider finally redirects to (under `stop_prefix`: the client's callback).
    """
    url, answer, body = await follow_to(session, authorize_url, stop_prefix)
    for fields in ({"prompt": "login", "login": user, "password": "any"}, {"prompt": "consent"}):
        if answer is None:
            return url
        match = _FORM_ACTION.search(body)
        if match is None:
            raise AssertionError(f"no form at {url} ({answer.status}): {body[:500]}")
        action = urljoin(url, html.unescape(match.group(1)))
        async with session.post(action, data=fields, allow_redirects=False) as posted:
            await posted.read()
            location = posted.headers.get("Location")
            if location is None:
                raise AssertionError(f"the provider answered {posted.status} to {fields}")
        url, answer, body = await follow_to(session, urljoin(action, location), stop_prefix)
    if answer is not None:
        raise AssertionError(f"the provider did not return to the client: {url} {body[:500]}")
    return url


if __name__ == "__main__":
    npm_packages.install_command(install, "oidc-provider", INSTALL_HINT)
